"""The detection loss on a decoded output (a user's model with labels): rows, assignment, direction."""

from __future__ import annotations

import numpy as np
import pytest

from tests.foreign_arch import V5Det, V8Det

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(("arch", "head", "strides"), [(V8Det, "yolov8", 3), (V5Det, "yolov5", 3)])
def test_rows_map_back_to_their_cells(arch, head, strides):
    """Each row's recovered cell centre is where the model's untrained boxes sit (the decode's anchor)."""
    from edgekit.compress.decoded_loss import row_points
    from edgekit.compress.distill import output_rows

    torch.manual_seed(0)
    model = arch().eval()
    for m in model.modules():  # zero offsets: every box is centred on its cell
        if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad:
            torch.nn.init.zeros_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    with torch.no_grad():
        xywh, _, _ = output_rows(model(torch.rand(1, 3, 160, 160)), head)
    points, steps = row_points(xywh.shape[1], 160, 160)
    assert len(set(steps.tolist())) == strides
    if head == "yolov5":  # sigmoid(0) * 2 - 0.5 = 0.5: the centre of the cell
        assert torch.allclose(xywh[0, :, :2], points, atol=1e-4)
    else:  # equal DFL distances on each side: the centre of the cell
        assert torch.allclose(xywh[0, :, :2], points, atol=1e-3)


def test_row_counts_of_no_grid_are_refused():
    from edgekit.compress.decoded_loss import row_points

    with pytest.raises(ValueError, match="not a YOLO grid"):
        row_points(777, 160, 160)


def test_assignment_takes_rows_inside_the_box_and_the_closer_box_wins():
    from edgekit.compress.decoded_loss import TOP_K, assign, row_points

    points, steps = row_points(525, 160, 160)
    half = lambda c, s: torch.tensor([c - s, c - s, c + s, c + s], dtype=torch.float32)  # noqa: E731
    pred = torch.cat([points - 8, points + 8], 1)  # every row predicts a 16 px box on its cell
    boxes = torch.stack([half(40.0, 10.0), half(120.0, 30.0)])
    owner, overlap = assign(boxes, pred, torch.full((2, len(points)), 0.5), points, steps)
    for j in range(2):
        rows = owner == j
        assert 0 < int(rows.sum()) <= TOP_K
        centre = (boxes[j, :2] + boxes[j, 2:]) / 2
        assert ((points[rows] - centre).abs() <= 2.5 * steps[rows, None]).all()
    assert (overlap[owner >= 0] > 0).all() and (overlap[owner < 0] == 0).all()


@pytest.mark.parametrize("head", ["yolov8", "yolov5"])
def test_the_loss_prefers_the_labels_and_its_gradient_points_there(head):
    """A batch predicting its labels costs less than one predicting nothing; descent moves towards them."""
    from edgekit.compress.decoded_loss import decoded_detection_loss, row_points

    points, _ = row_points(525, 160, 160)
    box, cls = np.array([[30.0, 30.0, 70.0, 70.0]], np.float32), np.array([2])
    n, nc = len(points), 6

    def output(hit: float) -> torch.Tensor:
        xywh = torch.cat([points, torch.full((n, 2), 16.0)], 1)
        near = ((points - 50.0).abs() < 12).all(1)
        xywh[near] = torch.tensor([50.0, 50.0, 40.0, 40.0])
        probs = torch.full((n, nc), 0.01)
        probs[near, 2] = hit
        if head == "yolov8":
            return torch.cat([xywh, probs], 1).T.unsqueeze(0)
        return torch.cat([xywh, torch.where(near, hit, 0.01)[:, None], probs], 1).unsqueeze(0)

    good = decoded_detection_loss(output(0.95), head, [box], [cls], (160, 160))
    bad = decoded_detection_loss(output(0.01), head, [box], [cls], (160, 160))
    assert float(good) < float(bad)
    out = output(0.5).requires_grad_(True)
    decoded_detection_loss(out, head, [box], [cls], (160, 160)).backward()
    assert out.grad is not None and torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
