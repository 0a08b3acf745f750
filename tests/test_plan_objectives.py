"""CLI tier: `tvmsplit plan --objective energy` and `--mem-cap` change the plan, checked by hand.

The figures here do not come from the planner's own cost model (``partition.evaluate``, which the
oracle shares): they are computed in this file from the formulas the README and
``partition/problem.py`` document, over every cut of the chain model (a chain of 10 layers has 11
monotone assignments: the first k layers on the end device, the rest on the edge):

- transfer per hop used: ``bytes x 8 / bandwidth + rtt / 2``; the outputs return down the link;
- latency = end compute + edge compute + upload + return;
- energy (mJ = W x ms): every device is busy for its compute, transmits while it sends up its
  link and idles for the rest of the request's latency;
- memory of a device: its layers' weights + the largest working set of one of its layers
  (inputs + outputs).

The cost table (a CSV file, as the README describes) is made so that the latency-optimal plan keeps
everything on the end device, the energy-optimal plan cuts after fc1 (the end device's 5 W burn on
fc2 costs more than radioing fc1's 1 KB output at 2 W), and a 1 MB memory cap on the end device,
which cannot hold fc1's 2 MB of weights, moves the cut to after pool3.
"""
from __future__ import annotations

import json

import pytest

import tvmsplit as ts
from tvmsplit import zoo

from cli_helpers import invoke

# ms per layer of zoo:chain on each device (the edge is 10x faster)
END_MS = {"conv1": 0.5, "conv2": 4.0, "pool1": 0.2, "conv3": 2.0, "conv4": 4.0, "pool2": 0.2,
          "conv5": 2.0, "pool3": 0.2, "fc1": 1.0, "fc2": 3.0}
EDGE_MS = {name: ms / 10 for name, ms in END_MS.items()}
UP_MBPS, DOWN_MBPS, RTT_MS = 2.0, 10.0, 0.2
LINK = f"slow:{UP_MBPS:g}/{DOWN_MBPS:g}/{RTT_MS:g}"
BUSY_W, IDLE_W, TX_W = 5.0, 0.5, 2.0          # the end device; the edge draws nothing (mains)
DEVICES = "end=x86_64,edge=x86_64"


@pytest.fixture(scope="module")
def chain():
    return ts.load(zoo.make("chain"), name="chain")


@pytest.fixture()
def costs_csv(tmp_path):
    path = tmp_path / "costs.csv"
    path.write_text("layer,end,edge\n" + "".join(f"{name},{END_MS[name]},{EDGE_MS[name]}\n"
                                                 for name in END_MS))
    return path


def plan_json(costs, *extra) -> dict:
    result = invoke("plan", "zoo:chain", "--devices", DEVICES, "--link", LINK, "--costs", costs,
                    "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def by_hand(g, k: int) -> dict:
    """The first ``k`` layers on the end device, the rest on the edge: latency, energy, memory."""
    layers = g.layers
    end_ms = sum(END_MS[layer.name] for layer in layers[:k])
    edge_ms = sum(EDGE_MS[layer.name] for layer in layers[k:])
    if k == len(layers):
        up_ms = back_ms = 0.0                                   # nothing crosses the link
    else:
        sent = g.inputs if k == 0 else layers[k - 1].outputs    # a chain: one tensor per cut
        up_ms = sum(t.nbytes for t in sent) * 8 / (UP_MBPS * 1e6) * 1e3 + RTT_MS / 2
        back_ms = sum(t.nbytes for t in g.outputs) * 8 / (DOWN_MBPS * 1e6) * 1e3 + RTT_MS / 2
    latency = end_ms + edge_ms + up_ms + back_ms
    energy = BUSY_W * end_ms + TX_W * up_ms + IDLE_W * (latency - end_ms - up_ms)

    def memory(part):
        work = [sum(t.nbytes for t in (*layer.inputs, *layer.outputs)) for layer in part]
        return sum(layer.param_bytes for layer in part) + max(work, default=0)

    return {"latency_ms": latency, "energy_mj": energy, "end_memory_bytes": memory(layers[:k]),
            "assignment": [0] * k + [1] * (len(layers) - k)}


def test_hand_figures_make_the_objectives_disagree(chain):
    """The premise of the CLI tests below, on the hand figures alone: the three optima differ."""
    n = len(chain.layers)
    options = [by_hand(chain, k) for k in range(n + 1)]
    assert min(range(n + 1), key=lambda k: options[k]["latency_ms"]) == n          # all on end
    assert min(range(n + 1), key=lambda k: options[k]["energy_mj"]) == n - 1       # cut after fc1
    fits = [k for k in range(n + 1) if options[k]["end_memory_bytes"] <= 10**6]
    assert max(fits) == n - 2 and min(fits, key=lambda k: options[k]["latency_ms"]) == n - 2


def test_energy_objective_chooses_the_energy_optimal_plan(chain, costs_csv):
    n = len(chain.layers)
    by_latency = plan_json(costs_csv, "--power", f"end={BUSY_W:g}/{IDLE_W:g}/{TX_W:g}")
    by_energy = plan_json(costs_csv, "--objective", "energy",
                          "--power", f"end={BUSY_W:g}/{IDLE_W:g}/{TX_W:g}")
    want_latency, want_energy = by_hand(chain, n), by_hand(chain, n - 1)
    # the latency plan keeps everything on the end device ...
    assert by_latency["predicted"]["assignment"] == want_latency["assignment"]
    assert by_latency["predicted"]["latency_ms"] == pytest.approx(want_latency["latency_ms"], rel=1e-9)
    # ... the energy plan sends fc1's output to the edge, and its energy is the hand figure
    got = by_energy["predicted"]
    assert got["assignment"] == want_energy["assignment"] != want_latency["assignment"]
    assert [s["layers"][-1] for s in by_energy["plan"]["stages"]] == ["fc1", "fc2"]
    assert got["energy_mj"] == pytest.approx(want_energy["energy_mj"], rel=1e-9)
    assert got["latency_ms"] == pytest.approx(want_energy["latency_ms"], rel=1e-9)
    # every other cut costs more energy (the planner did not stop at a local optimum)
    assert all(by_hand(chain, k)["energy_mj"] > got["energy_mj"] + 1e-6 for k in range(n + 1)
               if k != n - 1)
    # and the table says so: the energy figure, the objective and the devices by name
    table = invoke("plan", "zoo:chain", "--devices", DEVICES, "--link", LINK, "--costs", costs_csv,
                   "--objective", "energy", "--power", f"end={BUSY_W:g}/{IDLE_W:g}/{TX_W:g}")
    assert table.exit_code == 0, table.output
    assert f"energy {want_energy['energy_mj']:.2f} mJ" in table.stdout
    assert "objective energy" in table.stdout
    rows = [line.split() for line in table.stdout.splitlines() if line[:1].isdigit()]
    assert [(r[0], r[1], r[4]) for r in rows] == [("0", "end", "conv1..fc1"), ("1", "edge", "fc2..fc2")]


def test_memory_cap_moves_the_cut_and_is_respected(chain, costs_csv):
    n = len(chain.layers)
    cap = 10**6  # 1 MB: fc1 alone has 2 MB of weights
    assert chain.layer("fc1").param_bytes > cap
    free = plan_json(costs_csv)
    capped = plan_json(costs_csv, "--mem-cap", "end=1MB")
    assert free["predicted"]["assignment"] == by_hand(chain, n)["assignment"]
    assert free["predicted"]["memory_bytes"][0] > cap                 # so the cap must bind
    want = by_hand(chain, n - 2)                                      # cut after pool3
    got = capped["predicted"]
    assert got["assignment"] == want["assignment"] != free["predicted"]["assignment"]
    assert capped["devices"][0]["mem_cap_bytes"] == cap
    assert got["memory_bytes"][0] == want["end_memory_bytes"] <= cap
    assert got["latency_ms"] == pytest.approx(want["latency_ms"], rel=1e-9)
    assert [s["layers"][-1] for s in capped["plan"]["stages"]] == ["pool3", "fc2"]


def test_links_file_sink_and_deploy_cost(chain, tmp_path):
    """`plan --links-file`: the Pi reaches the cloud directly (100 Mbit/s) or through a slow edge;
    the plan goes straight to the cloud, priced by hand over every cut; `--sink last` drops the
    return; `--deploy-cost` (shipping 2.6 MB of weights + code at 100 Mbit/s) keeps it on the Pi."""
    costs = tmp_path / "costs.csv"
    costs.write_text("layer,pi,edge,cloud\n" + "".join(
        f"{name},{ms},{ms / 10},{ms / 100}\n" for name, ms in END_MS.items()))
    links = tmp_path / "links.json"
    links.write_text(json.dumps({"links": [
        {"between": ["pi", "edge"], "profile": LINK},
        {"between": ["edge", "cloud"], "up_mbps": 1000, "down_mbps": 1000, "rtt_ms": 0.2},
        {"between": ["pi", "cloud"], "up_mbps": 100, "down_mbps": 100, "rtt_ms": 0.2}]}))
    layers, n = chain.layers, len(chain.layers)

    def hand(k: int, back: bool = True) -> float:  # first k layers on the Pi, the rest on the cloud
        pi_ms = sum(END_MS[layer.name] for layer in layers[:k])
        cloud_ms = sum(END_MS[layer.name] / 100 for layer in layers[k:])
        if k == n:
            return pi_ms
        sent = chain.inputs if k == 0 else layers[k - 1].outputs
        up = sum(t.nbytes for t in sent) * 8 / 100e6 * 1e3 + 0.1
        down = sum(t.nbytes for t in chain.outputs) * 8 / 100e6 * 1e3 + 0.1
        return pi_ms + cloud_ms + up + (down if back else 0.0)

    def run(*extra):
        result = invoke("plan", "zoo:chain", "--devices", "pi=x86_64,edge=x86_64,cloud=x86_64",
                        "--costs", costs, "--links-file", links, "--json", *extra)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    for extra, back in (((), True), (("--sink", "last"), False)):
        got = run(*extra)
        best = min(range(n), key=lambda k: hand(k, back))
        assert [d["name"] for d in got["devices"]][-1] == "cloud"
        assert "edge" not in [d["name"] for d in got["devices"]]  # no relay through the edge
        assert got["predicted"]["latency_ms"] == pytest.approx(hand(best, back), rel=1e-9)
        assert got["predicted"]["latency_ms"] < hand(n)
        assert got["sink"] == ("last" if not back else "end")
    assert run("--sink", "last")["predicted"]["return_ms"] == 0.0
    one_shot = run("--deploy-cost")["predicted"]
    assert one_shot["assignment"] == [0] * n and one_shot["deploy_counted"]
    assert one_shot["latency_ms"] == pytest.approx(hand(n), rel=1e-9)
    assert run()["predicted"]["deploy_ms"] > 0  # reported even when not in the objective
