"""Runtime tier: a pipeline whose client sends a JPEG (bundle schema 5): the worker of the stage
that reads the input decodes it, the outputs equal onnxruntime's on the same decoded tensor,
and bytes that do not decode are refused by name while the worker keeps serving."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.bundle import ENCODED_SCHEMA_VERSION, SCHEMA_VERSION, Bundle, encode_inputs
from tvmsplit.check import compare, reference
from tvmsplit.encoding import EncodedSpec, Encoding, image_for, jpeg_input
from tvmsplit.errors import ShapeError
from tvmsplit.runtime import wire
from tvmsplit.runtime.launch import stage_worker_kind
from tvmsplit.runtime.pipeline import Pipeline, PipelineError

pytestmark = pytest.mark.timeout(180)
RTOL = 1e-4


@pytest.fixture(scope="module")
def jpeg_bundles(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # the build cache of this test session, as conftest
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
        root = tmp_path_factory.mktemp("jpeg")
        g = ts.load(zoo.make("chain", input_size=32), name="chain")
        enc, data = jpeg_input(g.inputs, 1000)
        out = {}
        for name, cuts in (("whole", []), ("split", ["pool1"])):
            ts.build_bundle(g, ts.plan_split(g, cuts), root / name)
            out[name] = encode_inputs(root / name, [enc])
    return g, enc, data, out


def _close(got, want):
    for k, v in want.items():
        assert compare(got[k], v, k).rel <= RTOL, k


def test_the_bundle_records_the_encoding_and_gives_the_input_its_wire_form(jpeg_bundles):
    g, enc, _, bundles = jpeg_bundles
    b = bundles["split"]
    manifest = json.loads((b.path / "manifest.json").read_text())
    assert manifest["schema_version"] == ENCODED_SCHEMA_VERSION
    assert manifest["input_encodings"] == [enc.to_json()]
    assert b.encodings == (enc,) and b.inputs == (enc.wire_spec,)
    assert isinstance(b.stages[0].plan.inputs[0], EncodedSpec)
    assert b.stages[0].plan.library_inputs == g.inputs  # the library takes the decoded tensor
    assert b.stages[0].encodings == (enc,) and b.stages[1].encodings == ()
    # only the Python worker decodes: the native one refuses a schema 5 bundle by its version
    assert stage_worker_kind(b.stages[0]) == "python"
    assert 1 <= enc.quality <= 100
    # and back: the raw tensor again, schema 2
    raw = encode_inputs(b.path, [])
    assert raw.inputs == g.inputs and raw.encodings == ()
    assert json.loads((b.path / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION
    again = encode_inputs(b.path, [enc])
    assert again.inputs == b.inputs and again.stages[0].plan == b.stages[0].plan


@pytest.mark.parametrize("name", ["whole", "split"])
def test_a_jpeg_input_gives_onnxruntimes_outputs_on_the_decoded_tensor(jpeg_bundles, name):
    g, enc, data, bundles = jpeg_bundles
    want = reference(g, {"input": enc.decode(data)})
    other = enc.encode(image_for(enc, seed=3))
    with Pipeline(bundles[name]) as p:
        got, trace = p.run({"input": data})                    # bytes
        _close(got, want)
        assert trace.hops[0].nbytes < len(data) + 500             # the JPEG travelled, not 12 KB
        got, _ = p.run({"input": enc.tensor(other)})          # or the uint8 array
        _close(got, reference(g, {"input": enc.decode(other)}))
        with pytest.raises(ShapeError, match="sent encoded"):  # the raw tensor is refused
            p.run({"input": enc.decode(data)})


def test_bytes_that_do_not_decode_are_refused_by_name_and_the_worker_keeps_serving(jpeg_bundles):
    g, enc, data, bundles = jpeg_bundles
    want = reference(g, {"input": enc.decode(data)})
    with Pipeline(bundles["split"]) as p:
        for bad, why in ((b"\xff\xd8 not really a jpeg", "do not decode as a JPEG"),
                         (data[: len(data) // 2], "do not decode as a JPEG"),
                         (Encoding(Bundle.load(p.bundle.path).encodings[0].input).encode(
                             np.zeros((32, 32, 3), np.uint8)), None)):
            if why is None:  # a valid JPEG of the right size: any content is fine
                p.run({"input": bad})
                continue
            with pytest.raises(PipelineError, match=rf"stage 0: input 'input': {len(bad)} bytes "
                               rf"{why} \(PIL: [^<]+\); send the bytes of a complete 32x32") as err:
                p.run({"input": bad})
            assert err.value.stage == 0 and err.value.code == "bad_input"  # the client's fault
            _close(p.run({"input": data})[0], want)  # and the next request is served
        # longer than the input's limit: refused by the worker's check, not decoded
        ctx = zmq.Context()
        try:
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(p.endpoints[0]["data"])
            s.send_multipart(wire.request(4242, 0, {"input": np.zeros(enc.limit_bytes + 1,
                                                                       np.uint8)}))
            got, deadline = [], time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                got += p.unmatched(timeout_s=0.5)
            assert got and got[0].error.code == "shape_mismatch", got
            assert "sent encoded" in got[0].error.message
            s.close()
        finally:
            ctx.term()
        _close(p.run({"input": data})[0], want)  # still serving
        assert p.health()[0]["errors"] == 3


def test_a_batch_with_an_undecodable_jpeg_fails_only_that_request(jpeg_bundles):
    """A batch decodes every request before computing any: the worker then runs its requests one
    by one, so garbage bytes fail their own request (``bad_input``), not their neighbours'."""
    from tvmsplit.runtime.worker import StageWorker

    g, enc, data, bundles = jpeg_bundles
    want = reference(g, {"input": enc.decode(data)})
    batch = [wire.request(rid, 0, {"input": enc.tensor(raw)})
             for rid, raw in ((1, data), (2, b"garbage, not a JPEG"), (3, data))]
    with StageWorker(bundles["whole"].path, 0, "tcp://127.0.0.1:0", control=None) as worker:
        answers = {m.id: m for m in (wire.decode(frames) for _, frames in worker.handle_batch(batch))}
        assert worker.errors == 1 and worker.served == 2
    assert sorted(answers) == [1, 2, 3]
    assert answers[2].kind == "error" and answers[2].error.code == "bad_input"
    assert answers[2].error.message.startswith("stage 0: input 'input': 19 bytes do not decode as "
                                               "a JPEG (PIL: cannot identify image file)")
    for rid in (1, 3):
        assert answers[rid].kind == "reply"
        _close(answers[rid].arrays(), want)


def test_the_native_worker_refuses_an_encoded_bundle_by_name(jpeg_bundles):
    """The native worker cannot decode a JPEG: it refuses a schema 5 bundle at start-up (one
    line, exit 2) rather than take the bytes for a float tensor."""
    import subprocess

    from tvmsplit.runtime.launch import find_native_worker

    worker = find_native_worker()
    if worker is None:
        pytest.skip("the native worker is not built (cmake -S . -B build/native)")
    _, _, _, bundles = jpeg_bundles
    for stage in (0, 1):
        run = subprocess.run([str(worker), "--bundle", str(bundles["split"].path), "--stage",
                              str(stage), "--bind", "tcp://127.0.0.1:0"], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and "schema version 5 (encoded inputs" in run.stderr, run.stderr
        assert "--worker python" in run.stderr
