"""Objectness-scaled distillation: zero for identical maps, positive otherwise, and it trains the student."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.compress.distill import distill_hook, objectness_distill_loss
from edgekit.core.errors import CompressionError
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig


def test_loss_is_zero_for_identical_maps_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 11, 20, 20) * 3, torch.randn(2, 11, 10, 10) * 3]
    same = objectness_distill_loss([t.clone() for t in teacher], teacher)
    assert abs(float(same)) < 1e-5
    other = objectness_distill_loss([t + 0.5 * torch.randn_like(t) for t in teacher], teacher)
    assert float(other) > 1e-3


def test_box_and_class_terms_are_weighted_by_teacher_objectness():
    teacher = [torch.zeros(1, 11, 4, 4)]
    student = [teacher[0].clone()]
    student[0][:, :4] += 2.0  # wrong boxes everywhere
    teacher_low, teacher_high = [t.clone() for t in teacher], [t.clone() for t in teacher]
    teacher_low[0][:, 4], teacher_high[0][:, 4] = -8.0, 8.0  # background vs confident object
    s_low, s_high = [student[0].clone()], [student[0].clone()]
    s_low[0][:, 4], s_high[0][:, 4] = -8.0, 8.0  # objectness itself matches, so only box terms differ
    assert float(objectness_distill_loss(s_high, teacher_high)) > 100 * float(
        objectness_distill_loss(s_low, teacher_low)
    )


def test_gradient_flows_to_the_student_only():
    torch.manual_seed(0)
    teacher = TinyYolo(TinyYoloConfig(width=0.5)).eval()
    student = copy.deepcopy(teacher).train()
    with torch.no_grad():
        student.pred8.weight.add_(0.1)
    hook = distill_hook(teacher, weight=2.0)
    x = torch.randn(2, 3, 160, 160)
    loss = hook(x, student.raw(x))
    loss.backward()
    assert float(loss.detach()) > 0
    assert student.pred8.weight.grad is not None and float(student.pred8.weight.grad.abs().sum()) > 0
    assert (
        student.stem[0][0].weight.grad is not None and float(student.stem[0][0].weight.grad.abs().sum()) > 0
    )
    assert all(p.grad is None for p in teacher.parameters())


def test_mismatched_maps_are_an_error():
    with pytest.raises(CompressionError, match="differ"):
        objectness_distill_loss([torch.zeros(1, 11, 4, 4)], [torch.zeros(1, 9, 4, 4)])
