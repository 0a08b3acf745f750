"""CLI tier: `tvmsplit plan` chooses a split from a cost table; `build --plan` builds exactly it."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.cli import cli, parse_bytes
from tvmsplit.errors import TvmsplitError


@pytest.fixture()
def costs(tmp_path):
    """The end device is 20x slower than the edge; per-layer times proportional to FLOPs."""
    g = ts.load(zoo.make("inception"))
    table = {"devices": ["end", "edge"],
             "compute_ms": {l.name: {"end": l.flops / 2e6, "edge": l.flops / 4e7} for l in g.layers}}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(table))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_plan_prints_stages_and_baselines_and_build_follows_it(costs, tmp_path):
    result = invoke("plan", "zoo:inception", "--devices", "end=x86_64,edge=x86_64", "--link",
                    "lan:1000/1000/0.1", "--costs", costs, "--save", tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    for word in ("planner dag-mincut", "all-on-end", "all-on-edge", "chain-dp", "predicted: latency"):
        assert word in result.output
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["predicted"]["latency_ms"] <= min(
        b["latency_ms"] for b in saved["baselines"].values() if b) + 1e-9
    built = invoke("build", "zoo:inception", "--plan", tmp_path / "plan.json", "-o", tmp_path / "b",
                   "--check")
    assert built.exit_code == 0, built.output
    bundle = ts.Bundle.load(tmp_path / "b")
    assert [list(s.plan.layers) for s in bundle.stages] == [s["layers"] for s in saved["plan"]["stages"]]


def test_plan_json_pins_and_memory_caps(costs):
    """Over the slow wifi link everything stays on the end device (~0.99 MB of weights and
    activations); a 500 KB cap on it must move layers to the edge, keep the pinned conv1 on the
    end device, and the capped plan's end memory must be within the cap."""
    def plan(*extra):
        result = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,edge=x86_64", "--link",
                        "wifi", "--costs", costs, "--pin", "conv1=end", "--json", *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    free = plan()
    assert set(free["predicted"]["assignment"]) == {0} and free["predicted"]["memory_bytes"][0] > 500_000
    data = plan("--mem-cap", "end=500KB,edge=16GiB")
    assert [d["mem_cap_bytes"] for d in data["devices"]] == [500_000, 16 * 2**30]
    got = data["predicted"]
    assert got["assignment"] != free["predicted"]["assignment"] and set(got["assignment"]) == {0, 1}
    assert got["assignment"][0] == 0  # the pin holds
    assert 0 < got["memory_bytes"][0] <= 500_000
    assert got["latency_ms"] > free["predicted"]["latency_ms"]  # the cap costs something


def test_plan_errors_are_one_line(costs, tmp_path, monkeypatch):
    monkeypatch.setenv("TVMSPLIT_PREDICTORS", str(tmp_path / "no-predictors"))
    no_costs = invoke("plan", "zoo:chain", "--devices", "end=rpi4b,edge=x86_64")
    assert no_costs.exit_code == 1 and "tvmsplit profile --device" in no_costs.output
    wrong = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,cloud=x86_64", "--costs", costs)
    assert wrong.exit_code == 1 and "cloud" in wrong.output
    cap = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,edge=x86_64", "--costs", costs,
                 "--mem-cap", "end=1KB,edge=1KB")
    assert cap.exit_code == 1 and "conv1" in cap.output and "1000 bytes" in cap.output
    for result in (no_costs, wrong, cap):
        assert "Traceback" not in result.output


def test_parse_bytes():
    assert parse_bytes("1GiB") == 2**30 and parse_bytes("512 MB") == 512 * 10**6
    assert parse_bytes("100") == 100
    with pytest.raises(TvmsplitError, match="not a number"):
        parse_bytes("lots")


def test_plan_energy_and_plot(costs, tmp_path):
    out = tmp_path / "plan.png"
    result = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,edge=x86_64", "--link", "wifi",
                    "--costs", costs, "--objective", "energy", "--power", "end=5/0.5/2",
                    "--plot", out)
    assert result.exit_code == 0, result.output
    assert "energy" in result.output and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,edge=x86_64", "--costs", costs,
                 "--objective", "energy", "--power", "end=lots")
    assert bad.exit_code == 1 and "BUSY/IDLE/TX" in bad.output
