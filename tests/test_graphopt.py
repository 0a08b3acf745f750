"""graphopt's conv layout step (``[build] conv_layout`` in a target file): builds in every layout
equal onnxruntime, through a split too (each stage's inputs and outputs stay NCHW), Clip is
carried through the layout (fused into the conv kernels, no transposes around it), a tuned build
in a layout applies its records, and a bad layout is one clear error.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.build import build_bundle
from tvmsplit.check import check_bundle
from tvmsplit.errors import TargetError
from tvmsplit.graphopt import CONV_LAYOUTS
from tvmsplit.split import plan_split
from tvmsplit.targets import get_target, parse_target_file


def small(name: str):
    return ts.load(zoo.make(name, input_size=32, width=0.25), name=name)


def layout_target(tmp_path, monkeypatch, layout: str) -> str:
    """A target file like x86_64 with ``[build] conv_layout``, registered by name."""
    text = Path(get_target("x86_64").source).read_text()
    name = f"x86_64-{layout.lower()}"
    text = text.replace('name = "x86_64"', f'name = "{name}"') + f'\n[build]\nconv_layout = "{layout}"\n'
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / f"{name}.toml").write_text(text)
    monkeypatch.setenv("TVMSPLIT_TARGETS", str(tmp_path / "targets"))
    return name


def kernels(graph, spec) -> list[str]:
    from tvm import tirx

    from tvmsplit.tune import tuning_modules

    (mod,) = tuning_modules(graph, spec)
    return sorted(gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))


@pytest.mark.parametrize("layout", [k for k in CONV_LAYOUTS if k != "NCHW"])
@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_a_split_build_in_each_conv_layout_equals_onnxruntime(tmp_path, monkeypatch, name, layout):
    target = layout_target(tmp_path, monkeypatch, layout)
    assert get_target(target).conv_layout == layout
    g = small(name)
    cut = g.layers[len(g.layers) // 2].name
    bundle = build_bundle(g, plan_split(g, [cut], [target, target]), tmp_path / "b")
    report = check_bundle(bundle, g)  # every stage's outputs (NCHW, as on the wire) vs onnxruntime
    assert report.ok, (name, layout, report.rel)


def test_nhwc_fuses_clip_into_the_convs_and_transposes_only_at_the_edges():
    g = small("mobilenetv2")  # ReLU6 = ONNX Clip after most convs
    nchw = kernels(g, get_target("x86_64"))
    nhwc = kernels(g, dataclasses.replace(get_target("x86_64"), conv_layout="NHWC"))
    standalone = [k for k in nhwc if ("maximum" in k or "minimum" in k) and "conv2d" not in k]
    assert not standalone, standalone
    transposes = [k for k in nhwc if "transpose" in k or "layout_transform" in k]
    assert len(transposes) <= 2, transposes  # the stage's input, and before the classifier
    assert sum("conv2d" in k for k in nhwc) == sum("conv2d" in k for k in nchw)


@pytest.mark.slow
def test_a_tuned_build_in_nhwc_applies_its_records_and_equals_onnxruntime(tmp_path, monkeypatch):
    from tvmsplit.tune import tune

    target = layout_target(tmp_path, monkeypatch, "NHWC")
    g = small("resnet")
    result = tune(g, get_target(target), db=tmp_path / "db", trials=8)
    assert result.trials_run > 0
    bundle = build_bundle(g, plan_split(g, targets=[target]), tmp_path / "b", db=tmp_path / "db")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["stages"][0]["tuning"]["tuned"] > 0
    report = check_bundle(bundle, g)
    assert report.ok, report.rel


def test_an_unknown_conv_layout_is_one_clear_error(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\narch = "x86_64"\n[target]\nkind = "llvm"\n[build]\nconv_layout = "NWHC"\n')
    with pytest.raises(TargetError, match=r"conv_layout = 'NWHC' is not one of NCHW, NHWC"):
        parse_target_file(path)
