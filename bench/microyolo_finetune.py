"""What a distilled fine-tune after the pruning trials gives `microyolo` (issue 17), torch FP32.

Loads the pruned model the `microyolo` recipe left in the compress cache (its progressive step, before the
recipe's own fine-tune; run first by `edgekit deploy -t local -r microyolo` or `bench/compression.py --recipes
microyolo`), fine-tunes it with
distillation from the converged reference (cosine from lr 2e-3, the `progressive` recipe's last step) and
prints val mAP before and after; the row goes to `bench/results/microyolo-finetune.json`. About 8 minutes on
2 cores for 10 epochs.

    .venv/bin/python bench/microyolo_finetune.py --epochs 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgekit.core.files import atomic_write_json  # noqa: E402

OUT = REPO / "bench" / "results" / "microyolo-finetune.json"


def main(argv: list[str] | None = None) -> int:
    import torch
    from common import cached_steps

    from edgekit.compress.context import evaluate_map
    from edgekit.compress.finetune import finetune
    from edgekit.compress.inputs import build_context
    from edgekit.compress.recipe import FinetuneSpec
    from edgekit.data.shapes import ShapesConfig, builtin_dataset
    from edgekit.export.onnx import model_macs_params
    from edgekit.models.zoo import cache_dir, converged_reference

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=float, default=10.0, help="distilled fine-tune epochs")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    steps = [  # the progressive step (the recipe's distilled fine-tune comes after it)
        s for s in cached_steps("microyolo")
        if json.loads(s.with_suffix(".json").read_text())["node"]["stage"] == "compress:progressive"
    ]  # fmt: skip
    if not steps:
        parser.error("no pruned microyolo in the compress cache: run `edgekit deploy -t local -r microyolo`")
    root = builtin_dataset(cache_dir(), ShapesConfig(), progress=not args.quiet)
    reference = converged_reference(root, 160, progress=not args.quiet)
    model = torch.load(steps[-1], map_location="cpu", weights_only=False)
    ctx = build_context(root, Path(tempfile.mkdtemp(prefix="microyolo-ft-")), 1.0, not args.quiet)
    ctx.teacher, ctx.seed = reference.model, 0
    before = evaluate_map(model, ctx.val)
    t0 = time.perf_counter()
    finetune(model, FinetuneSpec(epochs=args.epochs, lr=args.lr, distill=1.0), ctx, "distilled fine-tune")
    row = {
        "model": str(steps[-1].relative_to(cache_dir())),
        "params": int(model_macs_params(model, ctx.input_shape)["params"]),
        "epochs": args.epochs,
        "lr": args.lr,
        "reference": {k: reference.metrics[k] for k in ("map50", "map50_95")},
        "before": before,
        "after": evaluate_map(model, ctx.val),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(row, indent=1))
    atomic_write_json(OUT, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
