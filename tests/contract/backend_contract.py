"""The contract every backend passes: subclass ``BackendContract`` in ``tests/contract/test_<name>.py``.

Hooks a subclass sets or overrides:
    backend_name     registry name
    precisions       precisions to build and check
    tolerances       precision -> {"boxes": atol in pixels, "scores": atol} of the device outputs vs
                     ONNX Runtime FP32 on the host (boxes and scores live on different scales)
    prepare_onnx     turn the FP32 tiny detector into the input that precision's build expects
                     (a QDQ ONNX for int8 of a ``qdq`` backend); default: the FP32 file itself
    unsupported_onnx a model with an op this backend cannot run, and that op's type
    skip_reason      why the backend cannot run here (None = it can)
    device_transport the "device" the runner and a device build run on (default: this host, as it is)
    program          the torch form for a backend with ``torch_program`` (default: none; its fixture
                     ``fp32_onnx`` must then be the same model's ONNX)

Fixtures every backend gets: the tiny detector, a tiny calibration set (``calib``: 16 seeded images
imported with ``edgekit.calib``; a self-quantizing backend's INT8 is built from it), and eval inputs
in the artifact's own layout (NCHW or NHWC).

The tiny detector is real: two convs and a YOLOv5-style decode to ``[1, N, 5 + nc]`` rows, exported by
``torch.onnx.export(..., dynamo=False, opset_version=17)``. The device side runs through
``LocalTransport`` + ``Agent``, i.e. the same runner file that goes to a board.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.contract.base import ARTIFACT_JSON, Artifact
from edgekit.core.errors import BuildError, ModelError, UnsupportedOpError
from edgekit.core.files import sha256_file
from edgekit.core.registry import BACKENDS
from edgekit.data.preprocess import PreprocessSpec
from edgekit.device.agent import Agent, BenchPlan, runner_path
from edgekit.device.transport import LocalTransport
from edgekit.runners import detcore

INPUT_SIZE = 32
NUM_CLASSES = 3
EVAL_IMAGES = 4


def make_tiny_detector_onnx(path: Path, input_size: int = INPUT_SIZE, num_classes: int = NUM_CLASSES) -> Path:
    """Export a two-conv detector with a YOLOv5 decode: output ``[1, (size/4)^2, 5 + nc]`` in pixels."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TinyDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, 2, 1)
            self.c2 = nn.Conv2d(8, 5 + num_classes, 3, 2, 1)

        def forward(self, x):
            p = self.c2(torch.relu(self.c1(x)))
            b, c, h, w = p.shape
            p = p.permute(0, 2, 3, 1).reshape(b, h * w, c).sigmoid()
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack([gx, gy], -1).reshape(1, h * w, 2).float()
            stride = input_size / h
            xy = (p[..., :2] * 2 - 0.5 + grid) * stride
            wh = (p[..., 2:4] * 2) ** 2 * stride * 2
            return torch.cat([xy, wh, p[..., 4:]], -1)

    torch.manual_seed(0)
    model = TinyDetector().eval()
    x = torch.rand(1, 3, input_size, input_size)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["images"],
        output_names=["output"],
        dynamo=False,
        opset_version=17,
    )
    return path


def make_calibration_set(root: Path, count: int = 16):
    """A tiny managed calibration set: ``count`` seeded images with bright blocks, imported by edgekit."""
    from PIL import Image

    from edgekit.calib import import_set

    rng = np.random.default_rng(3)
    folder = root.parent / "calib_images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = rng.integers(0, 80, (48, 48, 3), dtype=np.uint8)
        x, y = rng.integers(0, 32, 2)
        img[y : y + 16, x : x + 16] = rng.integers(120, 256, 3, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"c{i:02d}.png")
    return import_set(
        folder, "contract", root=root, spec=PreprocessSpec(input_size=INPUT_SIZE), progress=False
    ).set


def add_custom_op(src: Path, dst: Path, op_type: str = "FancyOp", domain: str = "edgekit.test") -> Path:
    """Copy ``src`` with a node of an unknown custom domain spliced in before the graph output."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
    model.graph.node.append(helper.make_node(op_type, [f"{out}_pre"], [out], name="custom0", domain=domain))
    model.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.save(model, str(dst))
    return dst


def ort_fp32_outputs(onnx_path: Path, inputs: np.ndarray) -> list[np.ndarray]:
    """Reference raw outputs from ONNX Runtime on the host, one per image."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x[None]})[0] for x in inputs]


class BackendContract:
    """Template: every test here must pass for every backend (see the module docstring for hooks)."""

    backend_name: str = ""
    precisions: tuple[str, ...] = ("fp32",)
    tolerances: dict[str, dict[str, float]] = {"fp32": {"boxes": 1e-3, "scores": 1e-4}}
    skip_reason: str | None = None

    # -- hooks ------------------------------------------------------------------------------------
    def prepare_onnx(self, fp32_onnx: Path, precision: str, work: Path) -> Path:
        return fp32_onnx

    def unsupported_onnx(self, fp32_onnx: Path, work: Path) -> tuple[Path, str]:
        return add_custom_op(fp32_onnx, work / "custom_op.onnx"), "FancyOp"

    def options(self, precision: str) -> dict:
        return {"precision": precision, "threads": 1, "head": "yolov5", "num_classes": NUM_CLASSES}

    def device_transport(self, work: Path) -> LocalTransport:
        return LocalTransport(root=work)

    def program(self, work: Path) -> Path | None:
        return None

    @staticmethod
    def in_layout(artifact: Artifact, nchw: np.ndarray) -> np.ndarray:
        """The NCHW stack in the artifact's input layout."""
        if artifact.meta["input"]["layout"] == "NHWC":
            return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
        return nchw

    # -- parametrisation and fixtures -------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "precision" in metafunc.fixturenames:
            metafunc.parametrize("precision", self.precisions, scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls):
        if cls.skip_reason:
            pytest.skip(reason=cls.skip_reason)
        return BACKENDS.create(cls.backend_name)

    @pytest.fixture(scope="class")
    @classmethod
    def work(cls, tmp_path_factory) -> Path:
        return tmp_path_factory.mktemp(f"contract-{cls.backend_name}")

    @pytest.fixture(scope="class")
    @classmethod
    def fp32_onnx(cls, work) -> Path:
        return make_tiny_detector_onnx(work / "tiny_fp32.onnx")

    @pytest.fixture(scope="class")
    @classmethod
    def calib(cls, work):
        return make_calibration_set(work / "calibration")

    @pytest.fixture(scope="class")
    @classmethod
    def eval_inputs(cls, calib) -> np.ndarray:
        """Calibration-like images (held out: the set's last four), NCHW float32."""
        return np.concatenate(list(calib.arrays(spec=PreprocessSpec(input_size=INPUT_SIZE))))[-EVAL_IMAGES:]

    @pytest.fixture(scope="class")
    @classmethod
    def artifact(cls, backend, fp32_onnx, work, precision, calib) -> Artifact:
        src = cls().prepare_onnx(fp32_onnx, precision, work)
        out = work / f"art_{precision}"
        if backend.build_location == "host":
            program = cls().program(work)
            return backend.build(
                src, cls().options(precision), out, calib=calib, reference=fp32_onnx, torch_program=program
            )
        staged = backend.build(
            src, cls().options(precision), work / f"staged_{precision}", calib=calib, reference=fp32_onnx
        )
        return Agent(cls().device_transport(work)).build_on_device(staged.dir, out, progress=False)

    @pytest.fixture(scope="class")
    @classmethod
    def bench(cls, artifact, eval_inputs, work):
        agent = Agent(cls().device_transport(work))
        inputs = cls.in_layout(artifact, eval_inputs)
        return agent.bench(
            artifact.dir,
            BenchPlan(
                bench_input=inputs[:1],
                eval_inputs=inputs,
                warmup=2,
                min_warmup_s=0.0,
                iterations=20,
                min_seconds=0.1,
                threads=1,
                conf=0.0,
                timeout=120,
            ),
            progress=False,
        )

    # -- the contract -----------------------------------------------------------------------------
    def test_build_writes_artifact_json_with_hashes(self, artifact, precision):
        meta = artifact.meta
        assert (artifact.dir / ARTIFACT_JSON).is_file()
        assert (meta["backend"], meta["precision"], meta["schema"]) == (self.backend_name, precision, 1)
        assert meta["sha256"] and set(meta["files"].values()) <= set(meta["sha256"])
        for rel, digest in meta["sha256"].items():
            assert sha256_file(artifact.dir / rel) == digest
            assert (artifact.dir / rel).stat().st_size > 0
        assert meta["input"]["shape"] == [1, 3, INPUT_SIZE, INPUT_SIZE]
        assert meta["output"]["num_classes"] == NUM_CLASSES
        assert runner_path(meta["runner"]).is_file()

    def test_runtime_loads_the_artifact(self, backend, artifact):
        reloaded = Artifact.load(artifact.dir)
        backend.load_check(reloaded)  # raises BuildError if the runtime refuses it
        assert reloaded.meta == artifact.meta

    def test_runner_returns_latencies_and_eval_detections(self, bench):
        assert len(bench.latencies_ms) >= 20 and all(v > 0 for v in bench.latencies_ms)
        assert bench.stats["n"] == len(bench.latencies_ms)
        assert bench.stats["min"] <= bench.stats["p50"] <= bench.stats["p99"] <= bench.stats["max"]
        assert bench.fps == pytest.approx(len(bench.latencies_ms) / bench.wall_s)
        assert bench.first_ms > 0 and len(bench.warmup_ms) >= 2
        assert bench.power_w is None and bench.energy_mj is None
        assert len(bench.detections) == EVAL_IMAGES
        assert all(d.ndim == 2 and d.shape[1] == 6 for d in bench.detections)

    def test_outputs_match_ort_fp32(self, bench, fp32_onnx, eval_inputs, precision):
        tol = self.tolerances[precision]
        refs = ort_fp32_outputs(fp32_onnx, eval_inputs)
        for ref, got in zip(refs, bench.detections, strict=True):
            expected = detcore.candidates(ref, "yolov5", conf=0.0)
            assert got.shape == expected.shape  # conf=0 keeps every row, in order
            np.testing.assert_allclose(got[:, :4], expected[:, :4], rtol=0, atol=tol["boxes"])
            np.testing.assert_allclose(got[:, 4], expected[:, 4], rtol=0, atol=tol["scores"])

    def test_build_checked_the_artifact_against_fp32(self, artifact, precision, fp32_onnx, eval_inputs):
        parity = artifact.meta["parity"]
        expected = list(ort_fp32_outputs(fp32_onnx, eval_inputs[:1])[0].shape)
        assert parity["checked"] and parity["outputs"][0]["shape"] == expected
        tol = BACKENDS.get(self.backend_name).parity[precision]
        assert parity["outputs"][0]["cosine"] >= tol.min_cosine
        if precision == "int8":
            assert artifact.meta["calibration"]["sha256"] and artifact.meta["quantization"]["method"]

    def test_divergent_outputs_fail_the_build_and_leave_nothing(
        self, backend, fp32_onnx, work, calib, eval_inputs, monkeypatch
    ):
        precision = self.precisions[0]
        src = self.prepare_onnx(fp32_onnx, precision, work)
        shape = ort_fp32_outputs(fp32_onnx, eval_inputs[:1])[0].shape
        monkeypatch.setattr(type(backend), "_infer", lambda self, art, x: [np.zeros(shape, np.float32)])
        out = work / "out_divergent"
        program = self.program(work)
        with pytest.raises(BuildError, match="diverges from FP32") as info:
            backend.build(
                src, self.options(precision), out, calib=calib, reference=fp32_onnx, torch_program=program
            )
        assert "output 'output'" in info.value.message and info.value.hint
        assert not out.exists()

    @pytest.mark.parametrize("damage", ["truncated", "garbage"])
    def test_corrupt_onnx_is_a_model_error_and_leaves_no_out_dir(self, backend, fp32_onnx, work, damage):
        data = fp32_onnx.read_bytes()
        bad = work / f"{damage}.onnx"
        bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x08\xff not a model")
        out = work / f"out_{damage}"
        with pytest.raises(ModelError, match="corrupt or truncated"):
            backend.build(bad, self.options(self.precisions[0]), out)
        assert not out.exists()
        assert not [p for p in work.iterdir() if p.name.startswith(f".{out.name}.")]

    def test_unsupported_op_is_named(self, backend, fp32_onnx, work):
        src, op = self.unsupported_onnx(fp32_onnx, work)
        out = work / "out_unsupported"
        with pytest.raises(UnsupportedOpError, match=op) as info:
            backend.build(src, self.options(self.precisions[0]), out)
        assert op in info.value.ops and info.value.backend == self.backend_name
        assert not out.exists()
        problems = backend.check(src, self.options(self.precisions[0]))
        assert any(op in p.ops and p.severity == "error" for p in problems)

    def test_tampered_model_is_refused(self, artifact, work, precision):
        copy = work / f"tampered_{precision}"
        shutil.copytree(artifact.dir, copy)
        model = copy / artifact.files["model"]
        model.write_bytes(model.read_bytes() + b"\0")
        with pytest.raises(ModelError, match="sha256 mismatch"):
            Artifact.load(copy)
        runner = runner_path(artifact.runner)
        argv = [sys.executable, str(runner), "--artifact", str(copy)]
        res = LocalTransport().run(argv, timeout=60, check=False)
        assert res.exit_code != 0 and res.stdout == ""
        assert "sha256" in res.tail(1)
