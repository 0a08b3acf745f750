"""CLI tier: `tvmsplit plan` chooses a split from a cost table; `build --plan` builds exactly it."""
from __future__ import annotations

import json

import pytest

import tvmsplit as ts
from tvmsplit import zoo
from tvmsplit.cli import parse_bytes
from tvmsplit.errors import TvmsplitError

from cli_helpers import invoke


@pytest.fixture()
def costs(tmp_path):
    """The end device is 20x slower than the edge; per-layer times proportional to FLOPs."""
    g = ts.load(zoo.make("inception"))
    table = {"devices": ["end", "edge"],
             "compute_ms": {l.name: {"end": l.flops / 2e6, "edge": l.flops / 4e7} for l in g.layers}}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(table))
    return path


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
    assert no_costs.exit_code == 1 and "tvmsplit profile --target" in no_costs.output
    wrong = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,cloud=x86_64", "--costs", costs)
    assert wrong.exit_code == 1 and "cloud" in wrong.output
    cap = invoke("plan", "zoo:inception", "--devices", "end=rpi4b,edge=x86_64", "--costs", costs,
                 "--mem-cap", "end=1KB,edge=1KB")
    assert cap.exit_code == 1 and "conv1" in cap.output and "1000 bytes" in cap.output
    for result in (no_costs, wrong, cap):
        assert "Traceback" not in result.output


def test_plan_throughput_prices_a_send_cost_given_with_send_ms(tmp_path):
    """`--send-ms end=MS/MS_PER_KB`: the end's stage is busy that much longer per request when it
    sends up the link (the bottleneck, not the latency); a large one keeps the throughput plan
    from sending anything from the end; a bad value is one clear line."""
    g = ts.load(zoo.make("inception"))
    costs = tmp_path / "even.json"   # two devices alike: the best stream splits the work
    costs.write_text(json.dumps({"devices": ["end", "edge"], "compute_ms": {
        l.name: {"end": l.flops / 4e7, "edge": l.flops / 4e7} for l in g.layers}}))

    def plan(*extra):
        return json.loads(invoke("plan", "zoo:inception", "--devices", "end=x86_64,edge=x86_64",
                                 "--link", "lan:1000/1000/0.1", "--costs", costs, "--objective",
                                 "throughput", "--json", *extra).output)

    free, sends = plan(), plan("--send-ms", "end=2/0.5")
    assert len(set(free["predicted"]["assignment"])) == 2      # the end computes and sends
    cut = sends["baselines"]["chain-dp"]
    # 2 ms a request + 0.5 ms a KB: no cut pays, one device runs it all (the two tie)
    assert len(set(sends["predicted"]["assignment"])) == 1
    assert sends["predicted"]["send_ms"] == [0.0, 0.0]         # nothing goes up from a stage
    assert cut is None or cut["bottleneck_ms"] >= sends["predicted"]["bottleneck_ms"]
    bad = invoke("plan", "zoo:inception", "--devices", "end=x86_64,edge=x86_64", "--costs",
                 costs, "--send-ms", "end=fast")
    assert bad.exit_code == 1 and "--send-ms end=fast" in bad.output \
        and "Traceback" not in bad.output


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


def _small_mlp(seed: int = 0):
    """input [1,64] -> fc1 Gemm 64x256 + Relu -> fc2 Gemm 256x10: fc1 (66.5 KB of weights) fits
    no device with a 50 KB cap, so planning splits it into H-parts on both devices (HyPS)."""
    from tvmsplit.onnxbuild import mlp

    return mlp("mlp", [64, 256, 10], seed=seed)


@pytest.fixture()
def hyps_plan(tmp_path):
    """(model path, plan file, planner's result): a HyPS plan with a stage DAG saved by
    `tvmsplit plan --save` (end 8x slower than the edge, 50 KB per device)."""
    import onnx

    from tvmsplit.devices import Link
    from tvmsplit.partition import CostTable
    from tvmsplit.planning import Device, plan_partition

    model = tmp_path / "mlp.onnx"
    onnx.save(_small_mlp(), str(model))
    g = ts.load(model)
    table = {"devices": ["end", "edge"], "compute_ms": {
        layer.name: {"end": layer.flops / 2e5, "edge": layer.flops / 1.6e6} for layer in g.layers}}
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(table))
    saved = tmp_path / "plan.json"
    result = invoke("plan", model, "--devices", "end=x86_64,edge=x86_64", "--link", "lan:1000/1000/0.1",
                    "--costs", costs, "--mem-cap", "end=50000,edge=50000", "--save", saved)
    assert result.exit_code == 0, result.output
    planned = plan_partition(g, [Device("end", "x86_64", 50000), Device("edge", "x86_64", 50000)],
                             [Link.profile("lan:1000/1000/0.1")], CostTable.from_file(costs))
    return model, saved, planned


def test_saved_plan_file_reads_back_into_the_exact_plan(hyps_plan):
    from tvmsplit.plan import PLAN_FILE_VERSION, read_plan_file
    from tvmsplit.planning import PlannedSplit

    model, saved, planned = hyps_plan
    data = json.loads(saved.read_text())
    assert data["version"] == PLAN_FILE_VERSION and data["horizontal"] == {"fc1": 2}
    assert data["model_sha256"] == ts.load(model).model_sha256
    plan_file = read_plan_file(saved)
    assert plan_file.plan == planned.plan and plan_file.horizontal == (("fc1", 2),)
    assert not plan_file.plan.is_chain  # the H-parts in stages of their own, in parallel
    assert {r.to for r in plan_file.plan.entry} == {0, 1}
    again = PlannedSplit.from_json(data)
    assert again == planned and again.to_json() == data


def test_build_and_run_plan_build_the_saved_plan_without_planning(hyps_plan, tmp_path, monkeypatch):
    """A HyPS plan with H-parts and a stage DAG (direct routes) saved by `tvmsplit plan --save` is
    built as it is: no planner runs (they raise here); the graph is only rewritten the same way."""
    from tvmsplit import partition, planning, split
    from tvmsplit.check import compare, random_inputs, reference
    from tvmsplit.plan import read_plan_file
    from tvmsplit.runtime.pipeline import Pipeline

    model, saved, _ = hyps_plan

    def no_planning(*args, **kwargs):
        raise AssertionError("build --plan must not plan")

    for module, name in ((partition, "plan"), (planning, "plan"), (planning, "plan_partition"),
                         (split, "plan_split")):
        monkeypatch.setattr(module, name, no_planning)
    built = invoke("build", model, "--plan", saved, "-o", tmp_path / "b", "--check")
    assert built.exit_code == 0, built.output
    assert "OK" in built.output
    bundle = ts.Bundle.load(tmp_path / "b")
    assert bundle.plan == read_plan_file(saved).plan
    assert [s.plan for s in bundle.stages] == list(bundle.plan.stages)  # targets: names, as planned
    assert {s.plan.target for s in bundle.stages} == {"x86_64"}
    g = ts.load(model)
    x = random_inputs(g.inputs, seed=3)
    with Pipeline(bundle, timeout_s=120) as p:
        y, trace = p.run(x)
    assert compare(y["output"], reference(g, x)["output"], "output").rel <= 1e-4
    assert {(h.src, h.dst) for h in trace.hops} >= {(-1, 0), (-1, 1), (0, 2), (1, 2)}
    ran = invoke("run", model, "--plan", saved, "-o", tmp_path / "r", "--check")
    assert ran.exit_code == 0, ran.output
    assert "check vs onnxruntime" in ran.output and "OK" in ran.output


def test_plan_for_another_model_or_version_is_refused(hyps_plan, tmp_path):
    import onnx

    model, saved, _ = hyps_plan
    other = tmp_path / "other.onnx"
    onnx.save(_small_mlp(seed=1), str(other))
    want, got = ts.load(model).model_sha256, ts.load(other).model_sha256
    wrong = invoke("build", other, "--plan", saved, "-o", tmp_path / "b")
    assert wrong.exit_code == 1 and "Traceback" not in wrong.output
    assert want[:16] in wrong.output and got[:16] in wrong.output and "plan" in wrong.output
    assert not (tmp_path / "b").exists()
    data = json.loads(saved.read_text())
    for version, says in ((99, "version 99"), (None, "no version")):
        future = tmp_path / f"plan-{version}.json"
        future.write_text(json.dumps({**data, "version": version} if version else
                                     {k: v for k, v in data.items() if k != "version"}))
        refused = invoke("run", model, "--plan", future)
        assert refused.exit_code == 1 and says in refused.output and "--save" in refused.output
    data["plan"]["stages"][0]["inputs"][0]["shape"] = [1, 65]  # not the model as loaded
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    unfit = invoke("build", model, "--plan", edited, "-o", tmp_path / "s")
    assert unfit.exit_code == 1 and "does not fit" in unfit.output and "[1, 65]" in unfit.output
