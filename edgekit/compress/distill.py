"""Objectness-scaled distillation for one-stage detectors (Mehta & Ozturk, 2018, reworded).

The teacher's objectness says where there is something to learn: the student matches the teacher's
objectness everywhere, and its box and class outputs only in proportion to the teacher's objectness, so the
background cells (most of the map) do not drown the signal. Every term is a divergence (KL for the
probabilities, squared error for the box offsets), so the loss is exactly zero when student == teacher.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.core.errors import CompressionError


def _bernoulli_kl(student_logits: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of independent Bernoullis, elementwise (BCE minus the teacher's entropy)."""
    t = teacher_prob.clamp(1e-6, 1 - 1e-6)
    entropy = -(t * t.log() + (1 - t) * (1 - t).log())
    return F.binary_cross_entropy_with_logits(student_logits, teacher_prob, reduction="none") - entropy


def objectness_distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Distillation loss between raw maps ``[B, 5+nc, H, W]`` per scale (same shapes for both).

    Returns:
        Scalar: per scale, mean over cells of KL(obj) + t_obj * (squared box-offset error + KL(classes)).

    Raises:
        CompressionError: The two models' maps differ in shape (different strides or class counts).
    """
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise CompressionError(
                f"student map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ",
                "distil only between detectors with the same strides and classes",
            )
        t_prob = t.detach().sigmoid()
        weight = t_prob[:, 4]
        obj = _bernoulli_kl(s[:, 4], t_prob[:, 4])
        box = ((s[:, :4].sigmoid() - t_prob[:, :4]) ** 2).sum(1)
        cls = _bernoulli_kl(s[:, 5:], t_prob[:, 5:]).sum(1)
        total = total + (obj + weight * (box + cls)).mean()
    return total


def distill_hook(teacher: nn.Module, weight: float = 1.0) -> Callable[[torch.Tensor, list], torch.Tensor]:
    """A ``TrainHooks.extra_loss`` that adds ``weight`` x the distillation loss against ``teacher``.

    Example:
        >>> hooks = TrainHooks(extra_loss=distill_hook(teacher_model, 1.0))  # doctest: +SKIP
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def extra_loss(images: torch.Tensor, raw: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            target = teacher.raw(images)
        return weight * objectness_distill_loss(raw, target)

    return extra_loss
