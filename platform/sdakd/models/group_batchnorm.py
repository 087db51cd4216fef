"""BatchNorm over a worker group's whole batch, on GPUs and on CPUs alike."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn


class GroupBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are those of every rank's batch together when a process group is
    up, so that N workers of batch B normalise (and update their running statistics) as one worker of batch N*B;
    alone, exactly nn.BatchNorm2d. nn.SyncBatchNorm does the same on GPUs only (it refuses CPU tensors, so a gloo
    group on CPUs could not run it); its checkpoint keys are nn.BatchNorm2d's."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        # all_reduce with autograd: each rank's input gets the gradient of every rank's loss through the statistics
        sums = dist_nn.all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean.view(1, -1, 1, 1)
        var = dist_nn.all_reduce(centred.pow(2).sum(dims)) / count  # two passes: no E[x^2] - E[x]^2 cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                step = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked  # None: mean
                self.running_mean.lerp_(mean, step)
                self.running_var.lerp_(var * count / (count - 1), step)  # unbiased, as BatchNorm keeps it
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1) if self.affine else out
