"""Relational KD (RKD's distance and angle potentials) and CRD's content relations between output images.

Items are rows of an `(..., N, D)` tensor; leading dimensions batch independent item sets (one per image), and
every mean is over equally sized sets, so a batched call equals the per-image losses averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A set whose items all coincide has no non-zero distance to normalise by; its distances stay 0.
_EPS = 1e-12


def distance_potential(items: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances `(..., N, N)`, divided by the set's mean non-zero distance."""
    # the direct (not Gram-matrix) form: exact for near-duplicate items, and its gradient is 0 at zero distance
    d = torch.cdist(items, items, compute_mode="donot_use_mm_for_euclid_dist")
    nonzero = (d > 0).sum((-2, -1), keepdim=True).clamp_min(1)
    mean = d.sum((-2, -1), keepdim=True) / nonzero
    return d / mean.clamp_min(_EPS)


def angle_potential(items: torch.Tensor) -> torch.Tensor:
    """`(..., N, N, N)`: entry [a, b, c] is the cosine of the angle at item a between items b and c
    (0 where b or c is a, as RKD: the zero difference vector normalises to 0)."""
    diff = items.unsqueeze(-3) - items.unsqueeze(-2)  # [..., a, b] = x_b - x_a
    unit = F.normalize(diff, dim=-1)
    return unit @ unit.transpose(-1, -2)


def relational_kd(
    student_items: torch.Tensor, teacher_items: torch.Tensor, subsample: int | None = None
) -> torch.Tensor:
    """RKD: smooth-L1 between the distance potentials + 2 x smooth-L1 between the angle potentials.

    `subsample` bounds the items the N^3 angle term sees (evenly spaced, so the same items every call); the
    distance term always uses them all. The teacher side carries no gradient.
    """
    # in fp32 even under autocast: the loss lives in small differences between cosines that bf16 would round away
    with torch.autocast(student_items.device.type, enabled=False):
        dtype = torch.promote_types(student_items.dtype, torch.float32)  # fp32 or better
        student_items, teacher_items = student_items.to(dtype), teacher_items.to(dtype)
        with torch.no_grad():
            teacher_distance = distance_potential(teacher_items)
        distance = F.smooth_l1_loss(distance_potential(student_items), teacher_distance)
        n = student_items.shape[-2]
        if subsample is not None and n > subsample:
            keep = torch.linspace(0, n - 1, subsample, device=student_items.device).round().long()
            student_items, teacher_items = student_items[..., keep, :], teacher_items[..., keep, :]
        with torch.no_grad():
            teacher_angle = angle_potential(teacher_items)
        angle = F.smooth_l1_loss(angle_potential(student_items), teacher_angle)
    return distance + 2 * angle


def content_items(images: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """CRD's three slicings of `(B, C, H, W)` images into item sets `(B, N, D)`: H rows of C*W values, W columns
    of C*H values, and the non-overlapping `patch` x `patch` tiles of C*patch*patch values."""
    b, c, h, w = images.shape
    return {
        "rows": images.permute(0, 2, 1, 3).reshape(b, h, c * w),
        "columns": images.permute(0, 3, 1, 2).reshape(b, w, c * h),
        "patches": F.unfold(images, patch, stride=patch).transpose(1, 2),
    }


def content_relation_loss(
    student: torch.Tensor, teacher: torch.Tensor, patch: int = 32, subsample: int | None = None
) -> torch.Tensor:
    """CRD (unweighted): relational KD of rows + columns + patches, per image, averaged over the batch."""
    s_items, t_items = content_items(student, patch), content_items(teacher, patch)
    return sum(relational_kd(s_items[k], t_items[k], subsample) for k in s_items)
