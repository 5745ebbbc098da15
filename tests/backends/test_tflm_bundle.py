"""The TFLite Micro firmware bundle: C array, exact op resolver, settings; compiled for Cortex-M7."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from edgekit.backends.tflm.bundle import BundleSpec, TensorInfo, c_array, resolver_methods, write_bundle

SKIP_NO_ARM = "arm-none-eabi-gcc not installed (make system-deps installs Debian gcc-arm-none-eabi)"


def _spec(model: bytes = b"\x1c\x00\x00\x00TFL3" + bytes(range(40))) -> BundleSpec:
    return BundleSpec(
        model=model,
        ops=["CONV_2D", "PAD", "CONV_2D", "LOGISTIC"],
        inputs=[TensorInfo("images", (1, 96, 96, 3), "int8", 1 / 255, -128)],
        outputs=[TensorInfo("output", (1, 189, 8), "int8", 0.02, -3)],
        arena_bytes=123_456,
        class_names=["circle", "square", "tri"],
        head="yolov5",
        notes=["arena measured on x86-64 + 10 % margin"],
    )


def test_c_array_round_trips_every_byte():
    data = bytes(range(256)) * 3
    body = c_array(data)
    assert bytes(int(tok, 16) for tok in body.replace(",", " ").split()) == data


def test_resolver_registers_exactly_the_ops_used_and_refuses_unknown_ones():
    assert resolver_methods(["CONV_2D", "PAD", "CONV_2D", "LOGISTIC"]) == [
        "AddConv2D",
        "AddLogistic",
        "AddPad",
    ]
    with pytest.raises(KeyError, match="FLEX_ERF"):
        resolver_methods(["CONV_2D", "FLEX_ERF"])


def test_bundle_files_declare_extern_const_and_the_settings(tmp_path):
    files = write_bundle(_spec(), tmp_path)
    assert set(files.values()) == {
        "model_data.h",
        "model_data.cc",
        "op_resolver.h",
        "model_settings.h",
        "README.md",
    }
    header, source = (tmp_path / "model_data.h").read_text(), (tmp_path / "model_data.cc").read_text()
    assert "extern const unsigned char g_model[];" in header
    assert "alignas(16) const unsigned char g_model[]" in source and '#include "model_data.h"' in source
    resolver = (tmp_path / "op_resolver.h").read_text()
    assert "MicroMutableOpResolver<kEdgekitOpCount>" in resolver and "kEdgekitOpCount = 3" in resolver
    settings = (tmp_path / "model_settings.h").read_text()
    assert "kTensorArenaSize = 123456" in settings and "kInputZeroPoint = -128" in settings
    assert 'kClassNames[] = {"circle", "square", "tri"}' in settings


@pytest.mark.skipif(shutil.which("arm-none-eabi-g++") is None, reason=SKIP_NO_ARM)
def test_model_data_compiles_for_cortex_m7_into_rodata(tmp_path):
    model = bytes(range(256)) * 40
    write_bundle(_spec(model), tmp_path)
    obj = tmp_path / "model_data.o"
    flags = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard", "-std=c++17", "-Os"]
    subprocess.run(
        ["arm-none-eabi-g++", *flags, "-c", str(tmp_path / "model_data.cc"), "-o", str(obj)], check=True
    )
    size = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in size.splitlines()[1].split()[:3])
    assert text >= len(model) and data == 0 and bss == 0  # const: flash, not RAM
