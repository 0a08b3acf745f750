"""Unit tier: JPEG-encoded inputs (encode/decode, the quality search, the wire form's checks) and
the planner's decode cost (every exact planner still equals the brute-force oracle)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_partition import SETTINGS, _same_optimum, _two_layer_problem, problems
from tvmsplit.devices import Link
from tvmsplit.encoding import (EncodedSpec, Encoding, EncodingError, check_encodings,
                               decoded_stage, image_for, jpeg_input, quality_for_bytes,
                               synthetic_image, wire_stage)
from tvmsplit.graph import TensorSpec
from tvmsplit.partition import PlanningError, evaluate, plan
from tvmsplit.runtime.stage import check_tensors

X224 = TensorSpec("input", "float32", (1, 3, 224, 224))


def test_encode_decode_round_trip_is_the_image_within_jpeg_error():
    enc = Encoding(TensorSpec("x", "float32", (1, 3, 64, 48)), quality=95)
    img = synthetic_image(64, 48)
    data = enc.encode(img)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # SOI ... EOI
    x = enc.decode(data)
    assert x.shape == (1, 3, 64, 48) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    back = x[0].transpose(1, 2, 0) * 255
    # JPEG at 95 with 4:2:0 chroma on a grainy scene: a few levels of 255 on average, against
    # ~70 for another scene
    err = np.abs(back - img).mean()
    assert err < 10.0 and np.abs(back - synthetic_image(64, 48, seed=1)).mean() > 5 * err
    assert np.array_equal(enc.decode(enc.tensor(data)), x)  # the wire's uint8 array decodes alike
    grey = Encoding(TensorSpec("g", "float32", (1, 1, 32, 32)))
    assert grey.decode(grey.encode(image_for(grey))).shape == (1, 1, 32, 32)


def test_a_224_photo_like_scene_has_a_realistic_jpeg_size():
    """10-30 KB at quality 85-90 for 224x224, as a camera photo (not a flat test card)."""
    enc = Encoding(X224)
    img = image_for(enc)
    sizes = [len(enc.encode(img, q)) for q in (85, 90)]
    assert all(10_000 <= s <= 30_000 for s in sizes), sizes


def test_quality_search_picks_the_nearest_size():
    enc = Encoding(X224)
    img = image_for(enc)
    for target in (6_000, 15_000, 25_000):
        q, data = quality_for_bytes(enc, img, target)
        nearest = min(abs(len(enc.encode(img, k)) - target) for k in range(1, 101))
        assert abs(len(data) - target) == nearest and len(enc.encode(img, q)) == len(data)
    enc2, data = jpeg_input((X224,), 15_000)
    assert enc2.quality == quality_for_bytes(enc, img, 15_000)[0] and enc2.input == X224
    with pytest.raises(EncodingError, match="positive number of bytes"):
        quality_for_bytes(enc, img, 0)
    with pytest.raises(EncodingError, match="one image input"):
        jpeg_input((X224, TensorSpec("y", "float32", (1,))), 1000)


def test_bytes_that_are_not_a_jpeg_of_the_input_are_refused_by_name():
    enc = Encoding(TensorSpec("x", "float32", (1, 3, 32, 32)))
    good = enc.encode(image_for(enc))
    for bad, why in ((b"hello, not an image", "do not decode as a JPEG"),
                     (good[: len(good) // 2], "do not decode as a JPEG"),     # truncated
                     (b"\xff\xd8" + bytes(200), "do not decode as a JPEG"),
                     (Encoding(TensorSpec("x", "float32", (1, 3, 16, 32))).encode(
                         synthetic_image(16, 32)), "32x16 pixels .width x height.; the model takes 32x32: resize"),   # wrong size
                     (b"", "1..12288 bytes")):
        with pytest.raises(EncodingError, match=why):
            enc.decode(bad)
    big = Encoding(enc.input, max_bytes=100)
    with pytest.raises(EncodingError, match="takes 1..100 bytes"):
        big.decode(good)


def test_encodings_are_checked_and_round_trip_their_json():
    for bad, why in ((TensorSpec("x", "int64", (1, 3, 8, 8)), "float32"),
                     (TensorSpec("x", "float32", (1, 4, 8, 8)), "C 1"),
                     (TensorSpec("x", "float32", (3, 8, 8)), "float32")):
        with pytest.raises(EncodingError, match=why):
            Encoding(bad)
    with pytest.raises(EncodingError, match="quality"):
        Encoding(X224, quality=0)
    with pytest.raises(EncodingError, match="format 'png'"):
        Encoding(X224, format="png")
    enc = Encoding(X224, quality=77, max_bytes=50_000)
    assert Encoding.from_json(enc.to_json()) == enc
    check_encodings((X224,), (enc,))
    with pytest.raises(EncodingError, match="'image' is not a model input"):
        check_encodings((X224,), (Encoding(replace(X224, name="image")),))
    with pytest.raises(EncodingError, match="model takes float32"):
        check_encodings((replace(X224, shape=(1, 3, 96, 96)),), (enc,))


def test_the_wire_form_takes_any_jpeg_length_up_to_the_limit():
    enc = Encoding(TensorSpec("x", "float32", (1, 3, 32, 32)), max_bytes=5000)
    spec = enc.wire_spec
    assert isinstance(spec, EncodedSpec) and spec.nbytes == 5000 and spec.shape == (5000,)
    check_tensors((spec,), {"x": np.zeros(1234, np.uint8)}, "stage 0")
    for bad in (np.zeros(5001, np.uint8), np.zeros(0, np.uint8), np.zeros(10, np.int8),
                np.zeros((2, 5), np.uint8), np.zeros((1, 3, 32, 32), np.float32)):
        with pytest.raises(Exception, match="sent encoded"):
            check_tensors((spec,), {"x": bad}, "stage 0")


def test_a_stage_plan_goes_to_its_wire_form_and_back():
    from tvmsplit.plan import StagePlan

    x, y = TensorSpec("x", "float32", (1, 3, 8, 8)), TensorSpec("y", "float32", (1, 4))
    stage = StagePlan(0, "host", ("c",), (x,), (y, x), (x,), (y,), 0, 0)
    enc = Encoding(x)
    wired = wire_stage(stage, {"x": enc})
    assert wired.inputs == (enc.wire_spec,) and wired.outputs == (y, enc.wire_spec)
    assert wired.library_inputs == (x,) and decoded_stage(wired) == stage


# ------------------------------------------------------------------------- decode pricing
@st.composite
def decoded_problems(draw, **kw):
    p = draw(problems(**kw))
    dec = tuple(draw(st.floats(0, 40, allow_nan=False)) for _ in range(p.n_devices))
    return replace(p, input_bytes=draw(st.sampled_from([50, 5000])), decode_ms=dec)


@SETTINGS
@given(decoded_problems(chain=True))
def test_chain_dp_is_optimal_with_decode_costs(problem):
    _same_optimum(problem, "chain-dp")


@SETTINGS
@given(decoded_problems(max_devices=2, objective="latency", caps=False))
def test_mincut_is_optimal_with_decode_costs(problem):
    _same_optimum(problem, "dag-mincut")


@SETTINGS
@given(decoded_problems())
def test_ilp_and_auto_are_optimal_with_decode_costs(problem):
    _same_optimum(problem, "dag-ilp")
    _same_optimum(problem, "auto")


def test_decode_is_priced_where_the_input_is_read_by_hand():
    """A -> B, A reads the input. Decoding costs 9 ms on the end, 1 ms on the edge: it goes
    with A's device. 1000 B at 8 Mbit/s = 1 ms; the input is sent as 500 B (0.5 ms)."""
    link = Link("l", up_bps=8e6, down_bps=8e6, rtt_s=0.0)
    table = {"A": {"end": 1.0, "edge": 1.0}, "B": {"end": 1.0, "edge": 1.0}}
    p = _two_layer_problem(table, link, input_bytes=500, decode_ms=(9.0, 1.0))
    assert p.input_readers() == (0,)
    assert evaluate(p, [0, 0]).latency_ms == pytest.approx(11.0)        # decode + A + B on end
    assert evaluate(p, [0, 1]).compute_ms == pytest.approx((10.0, 1.0))
    edge = evaluate(p, [1, 1])
    assert edge.compute_ms == pytest.approx((0.0, 3.0)) and edge.latency_ms == pytest.approx(4.5)
    for method in ("chain-dp", "dag-mincut", "dag-ilp", "oracle", "auto"):
        assert plan(p, method)[1].assignment == (1, 1), method        # without decode: all-end
        plain = replace(p, decode_ms=())
        assert plan(plain, method)[1].assignment == (0, 0), method
        assert math.isclose(plan(plain, method)[1].latency_ms, 2.0)


def test_bad_decode_costs_are_refused():
    link = Link("l", 8e6, 8e6)
    table = {"A": {"end": 1.0, "edge": 1.0}, "B": {"end": 1.0, "edge": 1.0}}
    for bad in ((1.0,), (-1.0, 0.0), (math.nan, 0.0)):
        with pytest.raises(PlanningError, match="decode_ms needs one finite"):
            _two_layer_problem(table, link, input_bytes=10, decode_ms=bad)
    with pytest.raises(PlanningError, match="give input_bytes"):
        _two_layer_problem(table, link, decode_ms=(1.0, 1.0))
    assert _two_layer_problem(table, link, decode_ms=(0.0, 0.0)).compute[0] == (1.0, 1.0)


def test_a_decoding_runner_decodes_what_its_library_reads_and_forwards_the_bytes():
    """The stage reads x (decoded for its library) and forwards x on (as the bytes it came as)."""
    from tvmsplit.plan import StagePlan
    from tvmsplit.runtime.stage import DecodingRunner

    x, y = TensorSpec("x", "float32", (1, 3, 8, 8)), TensorSpec("y", "float32", (1,))
    enc = Encoding(x)
    stage = wire_stage(StagePlan(0, "host", ("c",), (x,), (y, x), (x,), (y,), 0, 0), {"x": enc})

    class Inner:  # what StageRunner does: check, compute y, forward x
        stage = decoded_stage(wire_stage(StagePlan(0, "host", ("c",), (x,), (y, x), (x,), (y,),
                                                   0, 0), {"x": enc}))

        def run(self, tensors):
            check_tensors(self.stage.inputs, tensors, "inner")
            return {"y": tensors["x"].sum(keepdims=True).reshape(1), "x": tensors["x"]}

        def close(self):
            pass

    data = enc.tensor(enc.encode(synthetic_image(8, 8)))
    with DecodingRunner(Inner(), stage, [enc]) as runner:
        out = runner.run({"x": data})
        assert np.allclose(out["y"], enc.decode(data).sum()) and out["x"] is data
        assert [o["x"] is data for o in runner.run_batch([{"x": data}] * 2)] == [True, True]
        with pytest.raises(EncodingError, match="do not decode"):
            runner.run({"x": np.frombuffer(b"\xff\xd8xx", np.uint8)})
