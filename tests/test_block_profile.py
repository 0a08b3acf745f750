"""Block profiles (per-block times and output sizes, no ONNX): the files, the graph, the plans.

The plans are checked against a hand-written price of every split of the chain (an oracle that
does not use the cost model), with and without the result's return.
"""
from __future__ import annotations

import itertools
import json
import random

import pytest

import tvmsplit as ts
from tvmsplit.blockprofile import BlockProfile, BlockProfileError, read_block_profile
from tvmsplit.devices import Link
from tvmsplit.partition import Problem, evaluate, plan

CSV = """block,output_bytes,pi_ms,edge_ms,cloud_ms
input,150000,,,
conv1,802816,120.5,9.1,2
pool1,200704,30,2.5,0.5
fc,4000,15,1,0.25
"""


def _profile(**kw) -> BlockProfile:
    fields = dict(name="m", devices=("pi", "edge", "cloud"), blocks=("conv1", "pool1", "fc"),
                  compute_ms=((120.5, 9.1, 2.0), (30.0, 2.5, 0.5), (15.0, 1.0, 0.25)),
                  output_bytes=(802816, 200704, 4000), input_bytes=150000)
    return BlockProfile(**{**fields, **kw})


def test_csv_and_json_read_the_same_profile(tmp_path):
    (tmp_path / "m.csv").write_text(CSV)
    from_csv = read_block_profile(tmp_path / "m.csv")
    assert from_csv == _profile()
    (tmp_path / "m.json").write_text(json.dumps(_profile().to_json()))
    assert read_block_profile(tmp_path / "m.json") == from_csv
    with_result = _profile(result_bytes=8)
    for suffix in ("csv", "json"):
        path = with_result.save(tmp_path / f"r.{suffix}")
        back = read_block_profile(path)
        assert back.result_bytes == 8 and back.compute_ms == with_result.compute_ms


def test_the_public_names():
    assert ts.BlockProfile is BlockProfile and ts.read_block_profile is read_block_profile
    assert callable(ts.plan_profile)


def test_the_graph_is_a_chain_with_the_profile_sizes():
    g = _profile().graph()
    assert [layer.name for layer in g.layers] == ["conv1", "pool1", "fc"]
    assert g.inputs[0].nbytes == 150000
    assert [layer.output_bytes for layer in g.layers] == [802816, 200704, 4000]
    assert [layer.inputs[0] for layer in g.layers[1:]] == [layer.outputs[0] for layer in g.layers[:-1]]
    assert g.outputs == g.layers[-1].outputs
    assert _profile(result_bytes=0).graph().outputs[0].nbytes == 0
    assert _profile().graph().model_sha256 != _profile(input_bytes=1).graph().model_sha256
    costs = _profile().costs(["cloud", "pi"])
    assert costs.devices == ("cloud", "pi") and costs.compute_ms[0] == (2.0, 120.5)
    with pytest.raises(BlockProfileError, match="no times for device.*'gpu'.*it has pi, edge, cloud"):
        _profile().costs(["pi", "gpu"])


def _by_hand(p: BlockProfile, devices, links, cuts) -> float:
    """Latency of running blocks [cuts[d], cuts[d+1]) on device d: compute, one message per
    hop whose sender has data for the devices above (bytes x 8 / rate + one-way delay), and the
    result's return down every hop from where the last block ran."""
    n = len(p.blocks)
    col = [p.devices.index(d) for d in devices]
    bounds = [0, *cuts, n]
    total = sum(p.compute_ms[b][col[d]] for d in range(len(devices))
                for b in range(bounds[d], bounds[d + 1]))
    last = max(d for d in range(len(devices)) if bounds[d] < bounds[d + 1])
    for h in range(last):  # hop h carries what is computed at or below device h
        made = bounds[h + 1]
        nbytes = p.input_bytes if made == 0 else p.output_bytes[made - 1]
        total += nbytes * 8 / links[h].up_bps * 1e3 + links[h].delay_s * 1e3 if nbytes else 0.0
    result = p.output_bytes[-1] if p.result_bytes is None else p.result_bytes
    for h in range(last):
        total += result * 8 / links[h].down_bps * 1e3 + links[h].delay_s * 1e3 if result else 0.0
    return total


def _random_profile(rng: random.Random, n: int, result_bytes) -> BlockProfile:
    devices = ("pi", "edge", "cloud")
    speed = (1.0, rng.uniform(2, 20), rng.uniform(10, 60))
    base = [rng.uniform(1, 100) for _ in range(n)]
    return BlockProfile("r", devices, tuple(f"b{i}" for i in range(n)),
                        tuple(tuple(t / s for s in speed) for t in base),
                        tuple(rng.choice([0, 1000, 50_000, 600_000]) for _ in range(n)),
                        rng.choice([0, 150_000, 600_000]), result_bytes)


@pytest.mark.parametrize("seed", range(40))
def test_plans_equal_the_best_split_priced_by_hand(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    p = _random_profile(rng, n, rng.choice([None, 0, 8]))
    links = [Link.profile(f"a:{rng.uniform(0.5, 50):.3f}/{rng.uniform(0.5, 50):.3f}/delay="
                          f"{rng.uniform(0, 80):.2f}ms"),
             Link.profile(f"b:{rng.uniform(5, 500):.3f}/{rng.uniform(5, 500):.3f}/rtt="
                          f"{rng.uniform(0, 40):.2f}ms")]
    for devices in (("pi", "edge"), ("pi", "cloud"), ("pi", "edge", "cloud")):
        k = len(devices)
        problem = Problem(p.graph(), p.costs(devices), tuple(links[:k - 1]))
        best = min(_by_hand(p, devices, links, cuts)
                   for cuts in itertools.combinations_with_replacement(range(n + 1), k - 1))
        name, got = plan(problem)
        assert got.latency_ms == pytest.approx(best, rel=1e-9, abs=1e-9), (seed, devices, name)
        # and the cost model prices every split as the hand does
        for cuts in itertools.combinations_with_replacement(range(n + 1), k - 1):
            bounds = [0, *cuts, n]
            assignment = [d for d in range(k) for _ in range(bounds[d], bounds[d + 1])]
            assert evaluate(problem, assignment).latency_ms == pytest.approx(
                _by_hand(p, devices, links, cuts), rel=1e-9, abs=1e-9)


def test_result_bytes_zero_means_nothing_returns():
    link = (Link.profile("w:1/1/delay=50ms"),)
    edge_all = [1, 1, 1]
    returned = evaluate(Problem(_profile().graph(), _profile().costs(["pi", "edge"]), link), edge_all)
    kept = evaluate(Problem(_profile(result_bytes=0).graph(), _profile().costs(["pi", "edge"]), link),
                    edge_all)
    assert returned.return_ms == pytest.approx(4000 * 8 / 1e6 * 1e3 + 50)
    assert kept.return_ms == 0.0
    assert returned.latency_ms - kept.latency_ms == pytest.approx(returned.return_ms)


BAD_CSV = """block,output_bytes,pi_ms,edge
b0,-5,abc,9.1
input,150000,,
b0,80,1
b1,4000,30,-2
result,12,,3
"""


def test_a_malformed_csv_names_every_row_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD_CSV)
    with pytest.raises(BlockProfileError) as err:
        read_block_profile(path)
    msg = str(err.value)
    for part in ("line 1, column 4 ('edge'): a device column is named <device>_ms",
                 "line 2 (b0), column 2 (output_bytes): '-5' is not an integer",
                 "line 2 (b0), column 3 (pi_ms): 'abc' is not a time",
                 "line 3 (input): the input row comes before the blocks",
                 "line 4: 3 cells, the header has 4",
                 "line 5 (b1), column 4 (edge_ms): '-2' is not a time",
                 "line 6 (result): the result row holds only a size",
                 "7 problem(s)", "README, 'Planning from a profile'"):
        assert part in msg, part
    for text, part in (("", "empty"), ("block,output_bytes,pi_ms\nb0,1,2\n", "no input row"),
                       ("block,output_bytes,pi_ms\ninput,1,\n", "no block rows"),
                       ("layer,pi\n", "the header must be block,output_bytes,<device>_ms"),
                       ("block,output_bytes,pi_ms\ninput,1,\nb,1,1\nb,2,2\n", "repeats an earlier block"),
                       ("block,output_bytes,pi_ms\ninput,1,\nresult,2,\nb,1,1\n", "after the result row"),
                       ("block,output_bytes,pi_ms\ninput,1.5,\nb,1,1\n", "not an integer")):
        path.write_text(text)
        with pytest.raises(BlockProfileError, match=part):
            read_block_profile(path)


def test_a_malformed_json_names_every_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({
        "input_byte": 5, "devices": ["pi", "edge"],
        "blocks": [{"name": "a", "output_bytes": 1.5, "compute_ms": {"pi": 1}},
                   {"name": "a", "output_bytes": 3, "compute_ms": {"pi": 1, "edge": 2, "x": 3}},
                   {"name": "input", "output_bytes": 3, "compute_ms": {"pi": 1, "edge": "2"}},
                   {"output_bytes": 3, "compute_ms": {"pi": 1, "edge": 1}, "time": 2}]}))
    with pytest.raises(BlockProfileError) as err:
        read_block_profile(path)
    msg = str(err.value)
    for part in ("unknown key 'input_byte'", "input_bytes: missing",
                 "blocks[0] (a).output_bytes: must be an integer >= 0 (bytes), got 1.5",
                 "blocks[0] (a).compute_ms.edge: missing",
                 "blocks[1] (a).compute_ms: device(s) 'x' are not in devices",
                 "blocks[2] (input).compute_ms.edge: must be a time in ms >= 0, got '2'",
                 "blocks[3].name: must be a non-empty string", "blocks[3]: unknown key 'time'",
                 "block 2: the name 'a' repeats", "block 3: the name 'input' is reserved"):
        assert part in msg, part
    for text, part in (("[1]", "expected a JSON object"), ("{", "not JSON"),
                       ('{"input_bytes": 1, "devices": [], "blocks": []}', "devices: must be")):
        path.write_text(text)
        with pytest.raises(BlockProfileError, match=part):
            read_block_profile(path)
    with pytest.raises(BlockProfileError, match="cannot read the profile"):
        read_block_profile(tmp_path / "missing.csv")


def test_the_dataclass_checks_its_fields():
    with pytest.raises(BlockProfileError, match="device 'pi' is listed twice"):
        _profile(devices=("pi", "pi", "cloud"))
    with pytest.raises(BlockProfileError, match="block 2: needs one finite time"):
        _profile(compute_ms=((1.0, 1.0, 1.0), (1.0, float("nan"), 1.0), (1.0, 1.0, 1.0)))
    with pytest.raises(BlockProfileError, match="result_bytes must be an integer"):
        _profile(result_bytes=-1)
