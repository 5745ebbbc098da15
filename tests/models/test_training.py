import numpy as np
import torch

from edgekit.models.loss import build_targets, detection_loss
from edgekit.models.tinyyolo import TinyYolo, TinyYoloConfig
from edgekit.models.train import TrainConfig, evaluate, train


def test_reference_detector_size_and_output_layout():
    model = TinyYolo(TinyYoloConfig(num_classes=6)).eval()
    params = sum(p.numel() for p in model.parameters())
    assert 350_000 < params < 500_000  # "~0.4 M params at 160 px"
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 160, 160))
    assert out.shape == (1, 20 * 20 + 10 * 10, 11)
    assert float(out[..., 4:].min()) >= 0 and float(out[..., 4:].max()) <= 1  # probabilities


def test_targets_use_centre_cell_and_two_neighbours():
    boxes = [np.array([[20.0, 20.0, 36.0, 36.0]], np.float32)]  # 16 px box centred at (28, 28) → stride 8
    t = build_targets(boxes, [np.array([2])], [(20, 20), (10, 10)], (8, 16), (16.0, 36.0))
    assert int(t[0]["pos"].sum()) == 3 and int(t[1]["pos"].sum()) == 0
    assert t[0]["pos"][0, 3, 3] and (t[0]["cls"][t[0]["pos"]] == 2).all()


def test_loss_decreases_when_training_on_a_batch(train_split):
    torch.manual_seed(0)
    model = TinyYolo(TinyYoloConfig(num_classes=train_split.num_classes)).train()
    x, boxes, classes = train_split.batch(np.arange(16))
    targets = build_targets(boxes, classes, [(20, 20), (10, 10)], model.strides, model.cfg.priors)
    before, _ = detection_loss(model.raw(x), targets, model.strides, model.cfg.priors)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(15):
        loss, _ = detection_loss(model.raw(x), targets, model.strides, model.cfg.priors)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * float(before.detach())


def test_cached_reference_detects_far_better_than_an_untrained_model(trained, val_split):
    untrained = TinyYolo(TinyYoloConfig(num_classes=val_split.num_classes)).eval()
    base = evaluate(untrained, val_split)
    assert trained.metrics["map50"] > base["map50"] + 0.2
    assert evaluate(trained.model, val_split) == {k: trained.metrics[k] for k in ("map50", "map50_95")}


def test_training_hooks_are_called(train_split):
    calls = {"loss": 0, "step": 0}

    def extra(images, raw):
        calls["loss"] += 1
        return raw[0].sum() * 0.0

    def after(model, lr):
        calls["step"] += 1

    from edgekit.models.train import TrainHooks

    model = TinyYolo(TinyYoloConfig(num_classes=train_split.num_classes))
    stats = train(model, train_split, TrainConfig(epochs=0.05), TrainHooks(extra, after), progress=False)
    assert calls["loss"] == calls["step"] == stats["steps"] >= 1
