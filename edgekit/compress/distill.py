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


def _paired(student: list[torch.Tensor], teacher: list[torch.Tensor], hint: str):
    """The (student, teacher) map pairs, or a CompressionError if their number or shapes differ."""
    if len(student) != len(teacher):
        raise CompressionError(f"the student has {len(student)} maps, the teacher {len(teacher)}", hint)
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise CompressionError(
                f"student map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ", hint
            )
    return list(zip(student, teacher, strict=True))


def objectness_distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Distillation loss between raw maps ``[B, 5+nc, H, W]`` per scale (same shapes for both).

    Returns:
        Scalar: per scale, mean over cells of KL(obj) + t_obj * (squared box-offset error + KL(classes)).

    Raises:
        CompressionError: The two models' maps differ in shape (different strides or class counts).
    """
    total = student[0].new_zeros(())
    for s, t in _paired(student, teacher, "distil only between detectors with the same strides and classes"):
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


def raw_map_distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Distillation between the raw maps of a detector whose head edgekit does not train (any layout).

    Per prediction conv, the squared error of every output channel divided by that channel's variance in
    the teacher's batch (so a box-offset channel and a class logit weigh alike, whatever their ranges),
    averaged over the maps. Zero when student == teacher; needs no labels and no knowledge of the decode.

    Raises:
        CompressionError: The maps differ in number or shape (a prediction conv lost channels).
    """
    total = student[0].new_zeros(())
    for s, t in _paired(student, teacher, "keep the prediction convs out of pruning (they are by default)"):
        t = t.detach()
        scale = t.var(dim=(0, 2, 3), keepdim=True) + 1e-4
        total = total + ((s - t) ** 2 / scale).mean()
    return total / len(student)


def output_rows(output: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """A detector's decoded output as ``(xywh [B, N, 4] in pixels, objectness [B, N] or None, classes)``.

    The layouts are those of :mod:`edgekit.runners.detcore` (``yolov8`` has no objectness; ``yolox`` rows
    are raw offsets, decoded here the same way).
    """
    if head == "yolov8":
        rows = output.transpose(1, 2)
        return rows[..., :4], None, rows[..., 4:]
    if head == "yolox":
        from edgekit.runners.detcore import yolox_grid

        cells, steps = (torch.from_numpy(a) for a in yolox_grid(output.shape[1]))
        xy = (output[..., :2] + cells) * steps
        wh = torch.exp(output[..., 2:4].clamp(-20.0, 20.0)) * steps
        output = torch.cat([xy, wh, output[..., 4:]], -1)
    return output[..., :4], output[..., 4], output[..., 5:]


def _prob_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of independent Bernoullis given as probabilities, elementwise."""
    s, t = student.clamp(1e-6, 1 - 1e-6), teacher.clamp(1e-6, 1 - 1e-6)
    return t * (t / s).log() + (1 - t) * ((1 - t) / (1 - s)).log()


def output_distill_loss(student: torch.Tensor, teacher: torch.Tensor, head: str) -> torch.Tensor:
    """Distillation on a detector's own decoded output (any head edgekit reads).

    Every row's probabilities (objectness and classes) follow the teacher's (Bernoulli KL); where the
    teacher is confident (weight: its score), the box follows the teacher's, as an L1 error relative to
    the teacher box's size, so small and large objects count alike. Zero when student == teacher.
    """
    teacher = teacher.detach()
    s_box, s_obj, s_cls = output_rows(student, head)
    t_box, t_obj, t_cls = output_rows(teacher, head)
    score = t_cls.max(-1).values * (t_obj if t_obj is not None else 1.0)
    size = (t_box[..., 2:4].clamp(min=1.0).prod(-1)).sqrt().unsqueeze(-1)
    box = ((s_box - t_box).abs() / size).sum(-1)
    cls = _prob_kl(s_cls, t_cls).sum(-1)
    if t_obj is not None:
        probs = _prob_kl(s_obj, t_obj).mean() + (t_obj * cls).sum() / (t_obj.sum() + 1e-6)
    else:
        probs = cls.mean()
    return probs + (score * box).sum() / (score.sum() + 1e-6)


def raw_map_objective(
    student: nn.Module, teacher: nn.Module, weight: float = 1.0, maps: float = 1.0, detection: float = 0.0,
    input_hw: tuple[int, int] | None = None,
):  # fmt: skip
    """A training objective (see :func:`edgekit.models.train.train`) of distillation, and labels if given.

    ``weight`` x the output distillation (:func:`output_distill_loss`) plus ``maps`` x the raw-map one
    (:func:`raw_map_distill_loss`). Measured on the built-in detector handed over as an ONNX file (L1 20 %,
    10 epochs on 1200 images at lr 3e-3, before the 0.1 rate scale of a user's model; teacher agreement
    mAP@0.5 / 0.5:0.95 on 300 held-back images): raw maps alone 0.937 / 0.680, output alone 0.950 / 0.749,
    both 0.957 / 0.773, so both are the default (not re-measured at the scaled rate).
    With ``detection`` > 0 the batch's labels add that weight x
    :func:`edgekit.compress.decoded_loss.decoded_detection_loss` on the student's output (``input_hw``:
    the network input's height and width).
    Both models must have ``forward_with_maps`` and ``head_layout`` (a
    :class:`~edgekit.models.foreign.ForeignDetector`).
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    head = student.head_layout

    def objective(x: torch.Tensor, boxes: list, classes: list) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.no_grad():
            t_out, t_maps = teacher.forward_with_maps(x)
        s_out, s_maps = student.forward_with_maps(x)
        loss = weight * output_distill_loss(s_out, t_out, head)
        if maps > 0:
            loss = loss + maps * raw_map_distill_loss(s_maps, t_maps)
        if detection > 0:
            from edgekit.compress.decoded_loss import decoded_detection_loss

            hw = input_hw or tuple(x.shape[2:])
            loss = loss + detection * decoded_detection_loss(s_out, head, boxes, classes, hw)
        return loss, s_maps

    return objective
