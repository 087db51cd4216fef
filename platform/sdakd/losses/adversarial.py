"""The adversarial objective as its own small piece, so methods only choose which D plays against the G."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AdversarialLoss:
    """`vanilla` = BCE with logits on the per-pixel logit map (Real-ESRGAN); `hinge` optional. `softplus` is
    StyleGAN2/GCFSR's name (BasicSR's wgan_softplus) for the same non-saturating logistic loss on per-image logits:
    softplus(-x) = BCE(x, 1) and softplus(x) = BCE(x, 0), so it shares vanilla's code."""

    def __init__(self, kind: str = "vanilla") -> None:
        if kind not in ("vanilla", "hinge", "softplus"):
            raise ValueError(f"unknown GAN loss {kind!r}; allowed: vanilla, hinge, softplus")
        self.kind = kind

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.kind == "hinge":
            return -fake_logits.mean()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def real(self, logits: torch.Tensor) -> torch.Tensor:
        """D's loss on samples it should call real."""
        if self.kind == "hinge":
            return F.relu(1 - logits).mean()
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def fake(self, logits: torch.Tensor) -> torch.Tensor:
        """D's loss on samples it should call fake."""
        if self.kind == "hinge":
            return F.relu(1 + logits).mean()
        return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def r1_penalty(logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E|grad_x D(x)|^2 over real images `real` (which must require grad); differentiable, for the D's loss."""
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
