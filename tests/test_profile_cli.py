"""`tvmsplit plan --profile FILE`: plans a block profile as the Python API does, without ONNX;\nthe result's return (result_bytes) and the input's size change the plan as priced by hand."""
from __future__ import annotations

import json

import pytest

import tvmsplit as ts

from cli_helpers import invoke

CSV = """block,output_bytes,pi_ms,edge_ms
input,150000,,
conv1,802816,120.5,9.1
pool1,2000,30,2.5
fc,4000,150,1
"""


@pytest.fixture()
def profile(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(CSV)
    return path


DEVICES = "pi=rpi4b,edge=x86_64"
LINK = "wan:1.6/1.6/delay=66.7ms"


def test_plan_from_a_profile_equals_the_python_api_and_loads_no_onnx(profile):
    out = invoke("plan", "--profile", profile, "--devices", DEVICES, "--link", LINK, "--json")
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    want = ts.plan_profile(profile, [ts.Device("pi", "rpi4b"), ts.Device("edge", "x86_64")],
                           [ts.Link.profile(LINK)])
    assert got["predicted"] == json.loads(json.dumps(want.to_json()))["predicted"]
    # the split after pool1 (pi 150.5 ms, 2000 B up: 10 + 66.7 ms, fc on the edge: 1 ms) would
    # have to return the 4000-byte result (20 + 66.7 ms): 314.9 ms > all on pi, 300.5 ms
    assert got["predicted"]["assignment"] == [0, 0, 0]
    assert got["predicted"]["latency_ms"] == pytest.approx(300.5)
    assert got["baselines"]["chain-dp"]["latency_ms"] == pytest.approx(300.5)
    table = invoke("plan", "--profile", profile, "--devices", DEVICES, "--link", LINK)
    assert table.exit_code == 0 and "planner chain-dp" in table.output and "all-on-edge" in table.output


def test_result_bytes_zero_and_input_bytes_override(profile, tmp_path):
    kept = tmp_path / "kept.csv"
    kept.write_text(CSV + "result,0,,\n")
    out = json.loads(invoke("plan", "--profile", kept, "--devices", DEVICES, "--link", LINK,
                            "--json").output)
    assert out["predicted"]["return_ms"] == 0.0
    # nothing returns: the split after pool1 wins (all on the edge ships 150 kB: 750 + 66.7 ms)
    assert out["predicted"]["assignment"] == [0, 0, 1]
    assert out["predicted"]["latency_ms"] == pytest.approx(150.5 + 10 + 66.7 + 1)
    small = json.loads(invoke("plan", "--profile", kept, "--devices", DEVICES, "--link", LINK,
                              "--input-bytes", 100, "--json").output)
    assert small["predicted"]["assignment"] == [1, 1, 1]
    assert small["predicted"]["latency_ms"] == pytest.approx(0.5 + 66.7 + 9.1 + 2.5 + 1)


def test_profile_errors_are_clean(profile, tmp_path):
    for args, part in ((["zoo:chain", "--profile", profile], "a MODEL (an .onnx file or zoo:NAME) or "
                                                             "--profile FILE, not both"),
                       ([], "plan takes a MODEL"),
                       (["--profile", profile, "--costs", profile], "drop --costs"),
                       (["--profile", profile, "--shape", "x=1"], "drop --shape")):
        out = invoke("plan", *args, "--devices", DEVICES)
        assert out.exit_code != 0 and part in out.output, out.output
    out = invoke("plan", "--profile", profile, "--devices", "pi=rpi4b,gpu=x86_64")
    assert out.exit_code == 1 and "no times for device(s) 'gpu'; it has pi, edge" in out.output
    bad = tmp_path / "bad.csv"
    bad.write_text("block,output_bytes,pi_ms\ninput,x,\n")
    out = invoke("plan", "--profile", bad, "--devices", "pi=rpi4b")
    assert out.exit_code == 1 and "line 2 (input), column 2" in out.output and "no block rows" in out.output
