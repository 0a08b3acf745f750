"""tvmsplit's planner against Scission (Lockhart et al., UCC 2020) on Scission's own data.

    python3 bench/bench_scission.py --scission-dir /work/.mirror/qub-blesson+Scission/repo/.git \\
        [--out build/scission] [--models vgg19,resnet50] [--check-upstream 6] [--json results.json]

``--scission-dir`` is a checkout of github.com/qub-blesson/Scission or its bare git directory
(the ``fetch`` tool's mirror); nothing of it is copied into this repository (it carries no
licence): its ``benchmark_data/`` is read at run time.

What it does, per model of ``benchmark_data/*.dat`` (per-block times of Keras models on a
Raspberry Pi 4, two edge boxes and a 6700k cloud with and without GPU) and per network file
(``network_stats.csv``: wireless, ``network_stats_wired.csv``):

1. converts the profiles into ``tvmsplit plan --profile`` files (``--out``/profiles/MODEL.json:
   times in ms, output bytes, ``input_bytes`` 150000 = Scission's default 0.15 MB input,
   ``result_bytes`` 0 = Scission does not return the result);
2. asks both tools the same queries: 2-tier, the Pi plus one other system (each of the 4), and
   3-tier, the Pi + an edge + a cloud (each of the 4 pairs); tvmsplit through
   ``tvmsplit plan --profile FILE --devices ... --link ... --json`` (in-process CliRunner);
3. prices with Scission's cost model, reimplemented here from ``scission_predict.py``
   (exhaustive over its ``create_splits``; a hop costs the full ping + bytes / bandwidth; the
   input goes from the Pi to whichever system runs the first block; no result return), every
   plan of the query's systems, and compares tvmsplit's plan with the best one;
4. ``--check-upstream N``: runs Scission's own ``scission_predict.py`` (needs numpy and
   matplotlib) on N models x both networks for 3 queries each that its criteria can express
   (edge used + cloud unused, edge unused + cloud used, both used) and checks that the
   reimplementation's best equals the one it prints (to its 4 printed decimals, 0.1 ms).

Matching Scission's conventions through tvmsplit's normal options: a link is
``--link NAME:MBPS/MBPS/delay=PINGms`` (one-way delay = the ping: each hop charges the whole
ping, Scission's convention; ``rtt=`` would charge half), the input size is the profile's
``input_bytes``, and "no result return" is the profile's ``result_bytes: 0``.

3-tier. tvmsplit plans a PATH of devices here (Pi -> edge -> cloud): data from the Pi to the
cloud relays through the edge (both hops' pings), while Scission lets the Pi reach the cloud
directly. ``device_graph_links`` builds every pairwise link of a query (the device graph) and
``write_device_graph`` writes it as a links file in the format of ``tvmsplit.partition.topology``; by
default ``plan_tvmsplit`` uses only the path's links. ``--graph-args '--links-file {links}
--sink last'`` plans the 3-tier queries over the device graph instead (BENCHMARKS.md: then all
144 3-tier queries get Scission's split).

Setup to state with the numbers: the machine, and that times are single-threaded Python.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

import tvmsplit as ts
from tvmsplit.cli import cli

INPUT_BYTES = 150_000  # Scission's default input, 0.15 MB (megabytes_to_bytes: x 1000 x 1000)
NETWORKS = {"wireless": "network_stats.csv", "wired": "network_stats_wired.csv"}
# targets only label the devices in a plan (nothing is built from a profile)
TARGETS = {"device": "rpi4b", "edge": "x86_64", "cloud": "x86_64"}


# ---- reading Scission's data ------------------------------------------------------------------
class _LayerBenchmark:
    """Stands in for scission_benchmark.py's ``__main__.LayerBenchmark`` when unpickling."""


class _Unpickler(pickle.Unpickler):
    """Only Scission's record class and builtins; anything else in a .dat file is refused."""

    def find_class(self, module, name):
        if (module, name) == ("__main__", "LayerBenchmark"):
            return _LayerBenchmark
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a Scission .dat file")


class ScissionData:
    """``benchmark_data/`` of a checkout or a bare git directory."""

    def __init__(self, root: Path):
        self.root = root
        self.bare = (root / "HEAD").is_file() and (root / "objects").is_dir()
        if not self.bare and not (root / "benchmark_data").is_dir():
            raise SystemExit(f"{root}: neither a Scission checkout (benchmark_data/) nor its git dir")

    def names(self) -> list[str]:
        if not self.bare:
            return sorted(p.name for p in (self.root / "benchmark_data").iterdir())
        out = subprocess.run(["git", "--git-dir", str(self.root), "ls-tree", "--name-only", "HEAD",
                              "benchmark_data/"], check=True, capture_output=True, text=True).stdout
        return sorted(Path(line).name for line in out.splitlines())

    def read(self, name: str) -> bytes:
        if not self.bare:
            return (self.root / "benchmark_data" / name).read_bytes()
        return subprocess.run(["git", "--git-dir", str(self.root), "show", f"HEAD:benchmark_data/{name}"],
                              check=True, capture_output=True).stdout

    def commit(self) -> str:
        if not self.bare:
            return "checkout"
        return subprocess.run(["git", "--git-dir", str(self.root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()

    def systems(self) -> dict[str, tuple[str, dict]]:
        """system name -> (tier: device/edge/cloud, {model: [block records]})."""
        out = {}
        for name in self.names():
            if not re.fullmatch(r"[a-z]+-.+\.dat", name):
                continue
            tier, system = name[:-4].split("-", 1)
            out[system] = (tier, _Unpickler(io.BytesIO(self.read(name))).load())
        return out

    def network(self, filename: str) -> dict[tuple[str, str], tuple[float, float]]:
        """(source, destination) -> (ping ms, bandwidth Mbit/s), as scission_predict reads it."""
        rows = list(csv.reader(io.StringIO(self.read(filename).decode())))[1:]
        return {(r[0].strip(), r[1].strip()): (float(r[2]), float(r[3])) for r in rows if r}


def to_profile(model: str, systems: dict) -> ts.BlockProfile:
    """One model's blocks on every system as a tvmsplit block profile (times s -> ms)."""
    names = sorted(systems, key=lambda s: ("device", "edge", "cloud").index(systems[s][0]))
    ref = systems[names[0]][1][model]
    for s in names:
        recs = systems[s][1][model]
        sizes = [(r.input_layer, r.output_layer, r.output_size) for r in recs]
        if sizes != [(r.input_layer, r.output_layer, r.output_size) for r in ref]:
            raise SystemExit(f"{model}: the blocks of {s} differ from those of {names[0]}")
    blocks = tuple(f"{r.input_layer}-{r.output_layer}" if r.input_layer != r.output_layer
                   else str(r.input_layer) for r in ref)
    return ts.BlockProfile(model, tuple(names), blocks,
                           tuple(tuple(systems[s][1][model][b].second_prediction * 1e3 for s in names)
                                 for b in range(len(ref))),
                           tuple(int(r.output_size) for r in ref), INPUT_BYTES, result_bytes=0)


# ---- Scission's cost model, reimplemented -----------------------------------------------------
def scission_splits(n: int):
    """``create_splits``: (device last block x, edge last block y), -1 = tier unused; the cloud
    runs the rest (max(x, y) + 1 .. n - 1) unless x or y is the last block."""
    for x in range(-1, n):
        for y in range(-1, n):
            if y > x or y == -1:
                yield x, y


def segments(n: int, x: int, y: int) -> tuple[range, range, range]:
    dev = range(0, x + 1)
    edge = range(x + 1, y + 1) if y != -1 else range(0)
    cloud = range(max(x, y) + 1, n) if x != n - 1 and y != n - 1 else range(0)
    return dev, edge, cloud


def scission_cost_s(p: ts.BlockProfile, net, device: str, edge: str | None, cloud: str | None,
                    x: int, y: int, quirk: bool = False) -> float:
    """``total_processing_time + get_transfer_overhead`` of one scenario, in seconds.

    ``quirk``: as scission_predict.py really computes it. Its ``create_scenarios`` tells whether
    the edge / cloud run anything by their summed *time*: when the edge's and the cloud's blocks
    took 0.0 s in total, the data the Pi sends counts 0 bytes (its ping is still charged), and
    when the cloud's took 0.0 s, so does the edge's. Some benchmark records are 0.0 s
    (vm2Core's resnet50v2 blocks 188, 190, 191), so the quirk makes a few splits look cheaper
    than their data allows; the comparison uses the model without it."""
    n = len(p.blocks)
    dev, ed, cl = segments(n, x, y)
    col = {d: k for k, d in enumerate(p.devices)}

    def t(sys_, blocks):
        return sum(p.compute_ms[b][col[sys_]] for b in blocks) / 1e3

    def hop(a, b, nbytes):
        ping_ms, mbps = net[(a, b)]
        return ping_ms / 1000 + nbytes / round(mbps * 125000)

    sent = p.input_bytes if not dev else p.output_bytes[dev[-1]]
    relayed = p.output_bytes[ed[-1]] if ed else 0
    edge_s, cloud_s = (t(edge, ed) if ed else 0.0), (t(cloud, cl) if cl else 0.0)
    if quirk and edge_s == 0 and cloud_s == 0:
        sent = 0
    elif quirk and cloud_s == 0:
        relayed = 0
    total = t(device, dev) + edge_s + cloud_s
    if ed:
        total += hop(device, edge, sent)
        if cl:
            total += hop(edge, cloud, relayed)
    elif cl:
        total += hop(device, cloud, sent)
    return total


def scission_best(p, net, device, edge, cloud, need_edge=None, need_cloud=None, quirk=False):
    """The best scenario over ``device`` + ``edge`` + ``cloud`` (None: that tier is not in the
    query); ``need_*`` True/False restricts to scenarios that use / leave unused a tier (what
    Scission's ``-e NAME`` / ``-e -1`` criteria do). Returns (cost s, (x, y), seconds taken)."""
    t0 = time.perf_counter()
    n = len(p.blocks)
    best = None
    for x, y in scission_splits(n):
        _, ed, cl = segments(n, x, y)
        if (ed and edge is None) or (cl and cloud is None):
            continue
        if need_edge is not None and bool(ed) != need_edge:
            continue
        if need_cloud is not None and bool(cl) != need_cloud:
            continue
        c = scission_cost_s(p, net, device, edge, cloud, x, y, quirk)
        if best is None or c < best[0]:
            best = (c, (x, y))
    return (*best, time.perf_counter() - t0)


def to_split(p: ts.BlockProfile, tiers: list[str], assignment) -> tuple[int, int]:
    """A tvmsplit assignment (an index into ``tiers``, the tier of each planned device, per
    block) as Scission's (x, y)."""
    on = [tiers[d] for d in assignment]
    x = max((b for b, t in enumerate(on) if t == "device"), default=-1)
    y = max((b for b, t in enumerate(on) if t == "edge"), default=-1)
    return x, y


# ---- tvmsplit --------------------------------------------------------------------------------
def link_spec(net, a: str, b: str) -> str:
    ping_ms, mbps = net[(a, b)]
    return f"{a}-{b}:{mbps:g}/{mbps:g}/delay={ping_ms:g}ms"  # the full ping per hop


def device_graph_links(net, systems: list[str]) -> dict[tuple[str, str], str]:
    """Every pairwise link among a query's systems: the device graph a topology-aware planner
    takes. The path planner below uses only consecutive pairs."""
    return {(a, b): link_spec(net, a, b) for i, a in enumerate(systems) for b in systems[i + 1:]
            if (a, b) in net}


def write_device_graph(path: Path, net, systems: list[str]) -> Path:
    """The query's device graph in ``tvmsplit.partition.topology``'s links-file format: every
    pairwise link, ``up`` from the first device to the second."""
    links = device_graph_links(net, systems)
    path.write_text(json.dumps({"devices": systems, "links": [
        {"between": [a, b], "profile": spec} for (a, b), spec in links.items()]}, indent=1))
    return path


def plan_tvmsplit(profile_file: Path, systems: list[str], tiers: list[str], net,
                  graph_args: str | None = None, graph_dir: Path | None = None) -> tuple[dict, list[str]]:
    """``tvmsplit plan --profile`` on the path ``systems`` (end first); with ``graph_args`` (a
    template of plan options with ``{links}``, e.g. "--links-file {links} --sink last"), a
    3-tier query is planned over its device graph instead of the path. Returns the plan's JSON
    and the tier of each of its devices (in the plan's device order)."""
    devices = ",".join(f"{s}={TARGETS[t]}" for s, t in zip(systems, tiers))
    args = ["plan", "--profile", str(profile_file), "--devices", devices, "--json"]
    if graph_args and len(systems) > 2:
        links = write_device_graph(graph_dir / f"{'+'.join(systems)}.json", net, systems)
        args += graph_args.format(links=links).split()
    else:
        links = device_graph_links(net, systems)
        args += ["--link", ",".join(links[(a, b)] for a, b in zip(systems, systems[1:]))]
    out = CliRunner().invoke(cli, args)
    if out.exit_code != 0:
        raise SystemExit(f"tvmsplit {' '.join(args)} failed: {out.output}")
    got = json.loads(out.output)
    tier_of = dict(zip(systems, tiers))
    return got, [tier_of[d["name"]] for d in got["devices"]]


def conventions_matter(p: ts.BlockProfile, q: "Query", net, best_split) -> dict[str, bool]:
    """Would tvmsplit's plan differ from Scission's best under the other conventions: half the
    ping per hop (``rtt=PING``), or the result returned to the Pi (the profile's default)?"""
    from dataclasses import replace

    from tvmsplit.partition import Problem, plan

    def split_with(profile, spec_of) -> tuple[int, int]:
        links = tuple(ts.Link.profile(spec_of(a, b)) for a, b in zip(q.systems, q.systems[1:]))
        b = plan(Problem(profile.graph(), profile.costs(q.systems), links))[1]
        return to_split(p, q.tiers, b.assignment)

    def half_ping(a, b):
        return link_spec(net, a, b).replace("/delay=", "/rtt=")

    return {"half_ping_differs": split_with(p, half_ping) != best_split,
            "result_returned_differs": split_with(replace(p, result_bytes=None),
                                                  lambda a, b: link_spec(net, a, b)) != best_split}


def planner_time_s(profile: ts.BlockProfile, systems, net) -> float:
    """The planner alone (``partition.plan`` on the problem ``plan --profile`` builds)."""
    from tvmsplit.partition import Problem, plan

    links = tuple(ts.Link.profile(link_spec(net, a, b)) for a, b in zip(systems, systems[1:]))
    problem = Problem(profile.graph(), profile.costs(systems), links)
    t0 = time.perf_counter()
    plan(problem)
    return time.perf_counter() - t0


@dataclass
class Query:
    model: str
    network: str
    systems: list[str]
    tiers: list[str]

    @property
    def label(self) -> str:
        return f"{self.model} {self.network} {'+'.join(self.systems)}"


def queries(models, systems: dict) -> list[Query]:
    by_tier = {t: [s for s, (tier, _) in systems.items() if tier == t] for t in ("device", "edge", "cloud")}
    (pi,) = by_tier["device"]
    out = []
    for model in models:
        for net in NETWORKS:
            for other in by_tier["edge"] + by_tier["cloud"]:
                out.append(Query(model, net, [pi, other], ["device", systems[other][0]]))
            for e in by_tier["edge"]:
                for c in by_tier["cloud"]:
                    out.append(Query(model, net, [pi, e, c], ["device", "edge", "cloud"]))
    return out


def compare(q: Query, p: ts.BlockProfile, profile_file: Path, net, repeat: int,
            graph_args: str | None = None, graph_dir: Path | None = None) -> dict:
    tier = dict(zip(q.tiers, q.systems))
    edge, cloud = tier.get("edge"), tier.get("cloud")
    best_s, best_split, _ = scission_best(p, net, q.systems[0], edge, cloud)
    quirk_s, quirk_split, _ = scission_best(p, net, q.systems[0], edge, cloud, quirk=True)
    got, tiers = plan_tvmsplit(profile_file, q.systems, q.tiers, net, graph_args, graph_dir)
    split = to_split(p, tiers, got["predicted"]["assignment"])
    ours_s = scission_cost_s(p, net, q.systems[0], edge, cloud, *split)
    n = len(p.blocks)
    search, planner = [], []
    for _ in range(repeat):  # interleaved: the two searches take turns
        search.append(scission_best(p, net, q.systems[0], edge, cloud)[2])
        planner.append(planner_time_s(p, q.systems, net))
    _, s_edge, s_cloud = segments(n, *best_split)
    direct = bool(s_cloud) and not s_edge and len(q.systems) == 3  # Pi -> cloud, skipping the edge
    verdict = ("same plan" if split == best_split else
               "priced no higher" if ours_s <= best_s + 1e-9 else "worse")
    return {"query": q.label, "tiers": len(q.systems), "model": q.model, "network": q.network,
            "systems": q.systems, "scission_split": best_split, "tvmsplit_split": split,
            "scission_ms": best_s * 1e3, "tvmsplit_priced_by_scission_ms": ours_s * 1e3,
            "tvmsplit_predicted_ms": got["predicted"]["latency_ms"], "verdict": verdict,
            "excess": ours_s / best_s - 1, "scission_uses_direct_link": direct,
            "quirk_changes_best": quirk_split != best_split, "quirk_best_ms": quirk_s * 1e3,
            "search_s": statistics.median(search), "planner_s": statistics.median(planner),
            **conventions_matter(p, q, net, best_split)}


# ---- Scission's own script, for the reimplementation ---------------------------------------------
def check_upstream(data: ScissionData, models, profiles) -> list[dict]:
    """Run scission_predict.py for 3 queries per model and network; compare its best."""
    if data.bare:
        script = subprocess.run(["git", "--git-dir", str(data.root), "show", "HEAD:scission_predict.py"],
                                check=True, capture_output=True).stdout
    else:
        script = (data.root / "scission_predict.py").read_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "scission_predict.py").write_bytes(script)
        (root / "benchmark_data").mkdir()
        for name in data.names():
            (root / "benchmark_data" / name).write_bytes(data.read(name))
        systems = data.systems()
        # scission_predict reads an all-digit criterion ("2500") as a layer number, not a name
        edges = [s for s, (t, _) in systems.items() if t == "edge" and not s.isdigit()]
        clouds = [s for s, (t, _) in systems.items() if t == "cloud" and not s.isdigit()]
        (pi,) = [s for s, (t, _) in systems.items() if t == "device"]
        for model in models:
            for net_name, net_file in NETWORKS.items():
                net = data.network(net_file)
                for e_arg, c_arg, edge, cloud in ((edges[0], "-1", edges[0], None),
                                                  ("-1", clouds[0], None, clouds[0]),
                                                  (edges[0], clouds[0], edges[0], clouds[0])):
                    out = subprocess.run(
                        [sys.executable, "scission_predict.py", "benchmark_data", net_file, model,
                         "--result-count", "1", "-e", e_arg, "-c", c_arg],
                        cwd=root, capture_output=True, text=True, timeout=300)
                    m = re.search(r"\[1\] ([0-9.]+)s", out.stdout)
                    if not m:
                        raise SystemExit(f"scission_predict.py {model} -e {e_arg} -c {c_arg}: "
                                         f"{out.stdout[-400:]}{out.stderr[-400:]}")
                    need = {"need_edge": edge is not None, "need_cloud": cloud is not None}
                    mine, _, _ = scission_best(profiles[model], net, pi, edge, cloud, **need,
                                               quirk=True)
                    fixed, _, _ = scission_best(profiles[model], net, pi, edge, cloud, **need)
                    rows.append({"model": model, "network": net_name, "e": e_arg, "c": c_arg,
                                 "upstream_s": float(m.group(1)), "reimplementation_s": mine,
                                 "without_quirk_s": fixed,
                                 "equal": abs(float(m.group(1)) - round(mine, 4)) < 1.5e-4})
                for png in root.glob("*.png"):
                    png.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scission-dir", required=True, type=Path)
    ap.add_argument("--out", default="build/scission", type=Path)
    ap.add_argument("--models", default="", help="comma-separated (default: all)")
    ap.add_argument("--check-upstream", type=int, default=0, metavar="N",
                    help="also run Scission's scission_predict.py on the first N models")
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--graph-args", default=None, metavar="TEMPLATE",
                    help="plan the 3-tier queries over their device graph: these `plan` options "
                         "instead of --link, {links} = the query's links file (in "
                         "tvmsplit.partition.topology's format), e.g. '--links-file {links} --sink last'")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed runs of each search per query, interleaved (median)")
    args = ap.parse_args()

    data = ScissionData(args.scission_dir)
    systems = data.systems()
    all_models = list(next(iter(systems.values()))[1])
    models = [m for m in args.models.split(",") if m] or all_models
    nets = {name: data.network(f) for name, f in NETWORKS.items()}
    (args.out / "profiles").mkdir(parents=True, exist_ok=True)
    profiles, files = {}, {}
    for m in models:
        profiles[m] = to_profile(m, systems)
        files[m] = profiles[m].save(args.out / "profiles" / f"{m}.json")
    print(f"Scission {data.commit()[:12]}: {len(systems)} systems ({', '.join(systems)}), "
          f"{len(models)} models; profiles in {args.out / 'profiles'}")

    graph_dir = args.out / "device-graphs"
    graph_dir.mkdir(exist_ok=True)
    rows = [compare(q, profiles[q.model], files[q.model], nets[q.network], args.repeat,
                    args.graph_args, graph_dir)
            for q in queries(models, systems)]
    for tiers in (2, 3):
        sub = [r for r in rows if r["tiers"] == tiers]
        count = {v: sum(r["verdict"] == v for r in sub) for v in ("same plan", "priced no higher", "worse")}
        print(f"{tiers}-tier: {len(sub)} queries: {count['same plan']} same split, "
              f"{count['priced no higher']} another plan priced no higher, {count['worse']} worse")
        for r in sub:
            if r["verdict"] == "worse":
                print(f"  worse: {r['query']}: Scission {r['scission_split']} {r['scission_ms']:.1f} ms, "
                      f"tvmsplit {r['tvmsplit_split']} {r['tvmsplit_priced_by_scission_ms']:.1f} ms "
                      f"(+{r['excess']:.1%}); "
                      + ("needs the direct Pi -> cloud link" if r["scission_uses_direct_link"]
                         else "NOT explained by a direct link"))
        relayed = [r for r in sub if r["verdict"] == "same plan" and r["scission_uses_direct_link"]]
        if relayed:
            excess = [r["tvmsplit_predicted_ms"] / r["scission_ms"] - 1 for r in relayed]
            how = ("tvmsplit plans over the device graph (the direct link too)" if args.graph_args
                   else "tvmsplit's path relays through the edge (same split, not the same route: "
                        "needs the direct link)")
            print(f"  of the same splits, {len(relayed)} leave the edge empty and run the rest on "
                  f"the cloud: Scission sends Pi -> cloud directly; {how}; tvmsplit predicts "
                  f"{statistics.median(excess):+.1%} (median; {min(excess):+.1%} to "
                  f"{max(excess):+.1%}) over Scission's price")
        print(f"  queries whose best scission_predict.py's zero-time quirk changes (not counted "
              f"above): {sum(r['quirk_changes_best'] for r in sub)}")
        print(f"  with another convention, plans that would differ from Scission's best: "
              f"half the ping per hop (rtt=PING) {sum(r['half_ping_differs'] for r in sub)}, "
              f"the result returned to the Pi {sum(r['result_returned_differs'] for r in sub)}")
        if sub:
            ratio = statistics.median(r["search_s"] / r["planner_s"] for r in sub)
            print(f"  time per query (median of {args.repeat} interleaved runs, then the median over "
                  f"queries): Scission's exhaustive search (reimplemented) "
                  f"{statistics.median(r['search_s'] for r in sub) * 1e3:.3f} ms, tvmsplit's planner "
                  f"{statistics.median(r['planner_s'] for r in sub) * 1e3:.3f} ms (ratio of medians "
                  f"per query {ratio:.2f}x)")
    upstream = check_upstream(data, models[:args.check_upstream], profiles) if args.check_upstream else []
    if upstream:
        ok = sum(r["equal"] for r in upstream)
        print(f"reimplementation (with its zero-time quirk) vs scission_predict.py: {ok}/"
              f"{len(upstream)} best latencies equal (to its printed 0.1 ms); the quirk changes "
              f"{sum(abs(r['without_quirk_s'] - r['reimplementation_s']) > 1e-9 for r in upstream)}"
              f" of them")
        for r in upstream:
            if not r["equal"]:
                print(f"  differs: {r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "upstream": upstream}, indent=1))


if __name__ == "__main__":
    main()
