"""Runtime tier: devices that hold only manifest.json receive their stage library from the client
(ITU-T F.748.20 9.1: deploy only the layers this device runs)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.check import reference
from tvmsplit.runtime.pipeline import PipelineError


def _worker(device_dir, stage, ready, *extra):
    return subprocess.Popen([sys.executable, "-m", "tvmsplit.runtime.worker", "--bundle",
                             str(device_dir), "--stage", str(stage), "--ready-file", str(ready),
                             "--await-library", *extra], stderr=subprocess.PIPE,
                            start_new_session=True)


def _ready(proc, path, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return json.loads(path.read_text())


@pytest.mark.timeout(180)
def test_push_stage_libraries_to_devices_that_hold_only_the_manifest(tmp_path):
    g = ts.load(zoo.make("chain"), name="chain")
    bundle = ts.build_bundle(g, ts.plan_split(g, ["pool1"]), tmp_path / "bundle")
    devices = []
    for i in range(2):  # each "device" gets the manifest only
        d = tmp_path / f"device{i}"
        d.mkdir()
        shutil.copy(bundle.path / "manifest.json", d / "manifest.json")
        devices.append(d)
    procs = []
    try:
        last = _worker(devices[1], 1, tmp_path / "r1")
        procs.append(last)
        info1 = _ready(last, tmp_path / "r1")
        first = _worker(devices[0], 0, tmp_path / "r0", "--next", info1["data"])
        procs.append(first)
        info0 = _ready(first, tmp_path / "r0")
        x = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
        with ts.Pipeline(bundle, endpoints=[info0, info1], timeout_s=20) as p:
            assert [h["deployed"] for h in p.health()] == [False, False]
            with pytest.raises(PipelineError, match="no library yet") as err:
                p.run(x)
            assert err.value.code == "not_deployed"
            p.deploy()
            assert [h["deployed"] for h in p.health()] == [True, True]
            y, trace = p.run(x)
            np.testing.assert_allclose(y["output"], reference(g, x)["output"], rtol=1e-4, atol=1e-5)
            # each device now holds exactly its own library, nothing else
            for i, d in enumerate(devices):
                assert sorted(f.name for f in d.iterdir()) == sorted(
                    ["manifest.json", bundle.stages[i].library.name])
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.timeout(180)
def test_a_library_that_does_not_match_the_manifest_is_refused(tmp_path):
    g = ts.load(zoo.make("chain"), name="chain")
    bundle = ts.build_bundle(g, ts.plan_split(g), tmp_path / "bundle")
    other = ts.build_bundle(g, ts.plan_split(g, ["pool2"]), tmp_path / "other")
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(bundle.path / "manifest.json", device / "manifest.json")
    proc = _worker(device, 0, tmp_path / "r0")
    try:
        import zmq

        info = _ready(proc, tmp_path / "r0")
        ctx = zmq.Context()
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(info["control"])
        s.send_multipart([b'{"cmd": "deploy"}', other.stages[0].library.read_bytes()])
        assert s.poll(20000)
        answer = json.loads(s.recv())
        assert not answer["ok"] and "does not match the manifest" in answer["error"]
        assert sorted(f.name for f in device.iterdir()) == ["manifest.json"]  # nothing written
        s.close()
        ctx.term()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
