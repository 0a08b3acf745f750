"""Fault injection (issue 11): kill or stop stage workers mid-stream and count what is answered.

(a) SIGKILL each stage in turn while ``--requests`` requests stream through a 3-stage pipeline of
    local workers (failover on, the default): at 1/4, 2/4 and 3/4 of the stream, stage 0, 1, 2.
    Reported per kill: time from the kill to the first answer after it, the replacement's start
    time, the requests re-sent; and for the whole stream: answered, equal to onnxruntime,
    duplicated, lost.
(b) SIGSTOP one stage for ``--stop-s`` seconds mid-stream, then SIGCONT: no request lost
    (timeout_s is above the pause).
(c) Hand-started ("remote") workers, stage 1 served by two replicas (stage 0 started with
    ``--next A,B``): SIGKILL one replica mid-stream; the client notices by heartbeats (its
    control socket stops answering; dead after 1 s) and re-sends what was in flight.

Model: the zoo "chain" (3x32x32 float32 input), split after pool1 and pool2; workers run with
TVM_NUM_THREADS=1 on this machine's cores; loopback TCP.

(d) ``--soak N``: N requests with one stage worker SIGKILLed every 1,000 (stages in turn);
    answered, equal to onnxruntime, lost, and the resident memory of the client and of the
    workers every 1,000 requests (it must stay flat).

Usage: python bench/bench_failover.py [--requests 1000] [--stop-s 10] [--soak 10000] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time

os.environ.setdefault("TVM_NUM_THREADS", "1")  # inherited by the worker processes

import onnxruntime as ort  # noqa: E402

import tvmsplit as ts  # noqa: E402
from tvmsplit import zoo  # noqa: E402
from tvmsplit.check import compare, random_inputs  # noqa: E402


def stream_with_kills(bundle, xs, kill_at: dict[int, int], stop_s: float | None = None):
    """Stream ``xs``; after answer k (a key of ``kill_at``) SIGKILL (or, with ``stop_s``, SIGSTOP
    for that long) stage ``kill_at[k]``. Returns the answers with their arrival times, the
    faults' times and the pipeline's failover records."""
    answers, faults = [], []
    with ts.Pipeline(bundle, timeout_s=max(30.0, 3 * (stop_s or 0)), max_in_flight=8) as p:
        for out in p.stream(xs):
            answers.append((time.monotonic(), out))
            stage = kill_at.get(len(answers))
            if stage is None:
                continue
            pid = p.endpoints[stage]["pid"]
            faults.append((time.monotonic(), stage, len(answers)))
            if stop_s is None:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.killpg(pid, signal.SIGSTOP)
                threading.Timer(stop_s, os.killpg, (pid, signal.SIGCONT)).start()
        return answers, faults, list(p.failovers)


def remote_replicas(bundle, xs, tmp: str):
    """(c): stream through hand-started workers with two replicas of stage 1, kill one."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    procs = []

    def start(stage: int, *extra: str) -> dict:
        ready = Path(tmp) / f"r{stage}-{len(procs)}.json"
        procs.append(subprocess.Popen([sys.executable, "-m", "tvmsplit.runtime.worker",
                                       "--bundle", str(bundle.path), "--stage", str(stage),
                                       "--ready-file", str(ready), *extra],
                                      start_new_session=True))
        while not ready.exists():
            time.sleep(0.02)
        return json.loads(ready.read_text())

    try:
        s2 = start(2)
        s1 = [start(1, "--next", s2["data"]) for _ in range(2)]
        s0 = start(0, "--next", ",".join(r["data"] for r in s1))
        answers, t_kill = [], None
        with ts.Pipeline(bundle, endpoints=[s0, s1, s2], timeout_s=30) as p:
            for out in p.stream(xs):
                answers.append((time.monotonic(), out))
                if len(answers) == len(xs) // 2:
                    os.killpg(s1[0]["pid"], signal.SIGKILL)
                    t_kill = time.monotonic()
            failovers = list(p.failovers)
        return answers, t_kill, failovers
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def soak(bundle, g, n: int) -> list[str]:
    """(d): n requests, a worker killed every 1,000; correctness and RSS every 1,000."""
    import psutil

    sess = ort.InferenceSession(g.model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [random_inputs(g.inputs, seed=i) for i in range(100)]
    want = [sess.run(None, x)[0] for x in inputs]
    me = psutil.Process()
    rows, answered, correct, kills = [], 0, 0, 0
    with ts.Pipeline(bundle, timeout_s=30, max_in_flight=8) as p:
        for i, (y, _) in enumerate(p.stream(inputs[k % 100] for k in range(n))):
            answered += 1
            correct += compare(y["output"], want[i % 100], "output").rel <= 1e-4
            if answered % 1000 == 0:
                workers = sum(psutil.Process(e["pid"]).memory_info().rss for e in p.endpoints)
                rows.append(f"| {answered} | {me.memory_info().rss / 2**20:.1f} | "
                            f"{workers / 2**20:.1f} | {len(p.failovers)} |")
                if answered < n:
                    os.killpg(p.endpoints[kills % len(p.endpoints)]["pid"], signal.SIGKILL)
                    kills += 1
    return [f"## (d) soak: {n} requests, a stage worker SIGKILLed every 1,000", "",
            f"answered {answered}/{n}, equal to onnxruntime {correct}, lost {n - answered}, "
            f"workers killed {kills}", "",
            "| answered | client RSS MiB | workers RSS MiB (sum) | failovers so far |",
            "|---|---|---|---|", *rows, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--stop-s", type=float, default=10.0)
    ap.add_argument("--soak", type=int, default=0, help="also run (d) with this many requests")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n = args.requests
    g = ts.load(zoo.make("chain"), name="chain")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = ts.build_bundle(g, ts.plan_split(g, ["pool1", "pool2"]), f"{tmp}/chain3")
        xs = [random_inputs(g.inputs, seed=i) for i in range(n)]
        sess = ort.InferenceSession(g.model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = [sess.run(None, x)[0] for x in xs]
        lines = ["# Failover under fault injection (bench/bench_failover.py)", "",
                 f"Model zoo chain (float32 3x32x32), 3 stages (cuts pool1, pool2), local workers, "
                 f"TVM_NUM_THREADS=1, loopback; {n} requests streamed, max_in_flight 8.", ""]

        kill_at = {n // 4: 0, n // 2: 1, 3 * n // 4: 2}
        answers, faults, failovers = stream_with_kills(bundle, xs, kill_at)
        correct = sum(compare(out[0]["output"], want[i], "output").rel <= 1e-4
                      for i, (_, out) in enumerate(answers))
        lines += ["## (a) SIGKILL each stage in turn", "",
                  f"answered {len(answers)}/{n} (one answer per request: late answers of a lost "
                  f"attempt are dropped by wire id), equal to onnxruntime {correct}, lost "
                  f"{n - len(answers)}", "",
                  "| stage killed | after answer | kill -> next answer ms | replacement ready ms "
                  "| kill -> first answer after it is ready ms | re-sent |",
                  "|---|---|---|---|---|---|"]
        for (t_kill, stage, k), f in zip(faults, failovers):
            t_next = next(t for t, _ in answers[k:]) if k < len(answers) else float("nan")
            t_back = next((t for t, _ in answers[k:] if t > t_kill + f.seconds), float("nan"))
            lines.append(f"| {stage} | {k} | {(t_next - t_kill) * 1e3:.0f} | "
                         f"{f.seconds * 1e3:.0f} | {(t_back - t_kill) * 1e3:.0f} | {f.resent} |")
        lines.append("")

        answers, faults, failovers = stream_with_kills(bundle, xs, {n // 2: 1}, args.stop_s)
        correct = sum(compare(out[0]["output"], want[i], "output").rel <= 1e-4
                      for i, (_, out) in enumerate(answers))
        gaps = [b[0] - a[0] for a, b in zip(answers, answers[1:])]
        lines += [f"## (b) SIGSTOP stage 1 for {args.stop_s:g} s", "",
                  f"answered {len(answers)}/{n}, equal to onnxruntime {correct}, lost "
                  f"{n - len(answers)}, failovers {len(failovers)} (a stopped worker is alive: "
                  f"none expected); longest gap between answers {max(gaps):.1f} s, median "
                  f"{statistics.median(gaps) * 1e3:.2f} ms", ""]
        answers, t_kill, failovers = remote_replicas(bundle, xs, tmp)
        correct = sum(compare(out[0]["output"], want[i], "output").rel <= 1e-4
                      for i, (_, out) in enumerate(answers))
        k = n // 2  # the requests in flight at the kill are answers k .. k+7 (max_in_flight 8)
        t_back = answers[min(k + 7, len(answers) - 1)][0]
        lines += ["## (c) hand-started workers, stage 1 on two replicas, SIGKILL one", "",
                  f"answered {len(answers)}/{n}, equal to onnxruntime {correct}, lost "
                  f"{n - len(answers)}; failovers {[(x.stage, x.how, x.resent) for x in failovers]}"
                  f"; kill -> the requests in flight at the kill all answered "
                  f"{(t_back - t_kill) * 1e3:.0f} ms (heartbeat: dead after 1 s unanswered)", ""]
        if args.soak:
            lines += soak(bundle, g, args.soak)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
