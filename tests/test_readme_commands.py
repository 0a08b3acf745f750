"""CLI tier: the README's commands, run as a user runs them, each checked by what it produces.

Where the commands are exercised (this file holds the ones no other test ran):

- `zoo`, `inspect`, `targets`, `build --check`, `run --split-at --check`, `demo`: test_cli.py
- `tune`: test_tune.py;  `plan --costs FILE.json`, `build --plan`: test_plan_cli.py
- `plan --costs FILE.csv --objective energy --power`, `--mem-cap`: test_plan_objectives.py
- `profile --device`, `train --device`, `predict --device`, `plan` without `--costs`:
  test_predict.py::test_profile_train_predict_and_plan_through_the_cli (one real profile, ~35 s)
- here: `keys` + `run --secure`, `plan --save` + `run --plan`, `worker --secure --next-key` +
  `run --workers`, `testbed up --profile 4g` / `status` / `down` (root; skipped with the reason
  where namespaces, tc or qemu are missing).

In-process commands go through click's CliRunner; workers and the testbed, which are long-lived
processes in the README, run as subprocesses of the CLI entry point (``tvmsplit.cli:main``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings

import pytest
import zmq
from click.testing import Result

import tvmsplit as ts

from cli_helpers import invoke, ok

pytestmark = pytest.mark.timeout(300)
TVMSPLIT = [sys.executable, "-c", "from tvmsplit.cli import main; main()"]   # the `tvmsplit` script


def check_line(result: Result, tolerance: float = 1e-4) -> float:
    """The max relative error from `--check`'s last line (which must say OK)."""
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("check vs onnxruntime") and last.endswith("OK"), result.stdout
    rel = float(last.split("max rel err ")[1].split()[0])
    assert rel <= tolerance
    return rel


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """`tvmsplit keys DIR`: the keypairs --secure uses."""
    d = tmp_path_factory.mktemp("keys") / "keys"
    out = ok(invoke("keys", d)).stdout
    assert [line.split(":")[0] for line in out.splitlines()] == ["client", "worker"]
    return d


# ------------------------------------------------------------------- keys and run --secure
def test_keys_then_run_secure(keys, tmp_path):
    """`tvmsplit keys keys/ && tvmsplit run zoo:chain --split-at pool1 --secure keys/`."""
    from zmq.auth import load_certificate

    assert sorted(p.name for p in keys.iterdir()) == ["client.key", "client.key_secret",
                                                      "worker.key", "worker.key_secret"]
    for name in ("client", "worker"):
        public, secret = load_certificate(keys / f"{name}.key_secret")   # real Z85 CURVE keys
        assert len(public) == len(secret) == 40 and public != secret
        assert load_certificate(keys / f"{name}.key") == (public, None)
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
    run = ok(invoke("run", "zoo:chain", "--split-at", "pool1", "--secure", keys, "--requests", "3",
                    "--check"))
    assert "starting 2 worker(s) (local processes), CurveZMQ" in run.stderr
    assert "stage 1 [x86_64]" in run.stdout and "3 streamed requests" in run.stdout
    check_line(run)
    # --secure really uses the keys: the workers need worker.key_secret, and say so without it
    partial = tmp_path / "partial"
    shutil.copytree(keys, partial)
    (partial / "worker.key_secret").unlink()
    missing = invoke("run", "zoo:chain", "--split-at", "pool1", "--secure", partial)
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert missing.stderr.splitlines()[-1] == (
        f"error: secret key file {partial}/worker.key_secret is missing; create them with "
        f"`tvmsplit keys {partial}` (or copy it there from where the keys were made)")
    again = invoke("keys", keys)  # keys are never overwritten silently
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


# ------------------------------------------------------------------------- run --plan
# ms per layer of zoo:chain: a 1 MB cap on the end device puts the cut after pool3
CHAIN_COSTS = {"conv1": (0.5, 0.05), "conv2": (4.0, 0.4), "pool1": (0.2, 0.02), "conv3": (2.0, 0.2),
               "conv4": (4.0, 0.4), "pool2": (0.2, 0.02), "conv5": (2.0, 0.2), "pool3": (0.2, 0.02),
               "fc1": (1.0, 0.1), "fc2": (3.0, 0.3)}


def test_plan_save_then_run_plan(tmp_path):
    """`tvmsplit plan ... --save plan.json` then `tvmsplit run MODEL --plan plan.json --check`:
    the bundle run is the plan's split, and its output is onnxruntime's."""
    costs = tmp_path / "costs.csv"
    costs.write_text("layer,end,edge\n" + "".join(f"{k},{a},{b}\n" for k, (a, b) in CHAIN_COSTS.items()))
    saved = tmp_path / "plan.json"
    table = ok(invoke("plan", "zoo:chain", "--devices", "end=x86_64,edge=x86_64", "--link",
                      "slow:2/10/0.2", "--costs", costs, "--mem-cap", "end=1MB", "--save", saved)).stdout
    rows = [line.split() for line in table.splitlines() if line[:1].isdigit()]
    assert [(r[0], r[1], r[4]) for r in rows] == [("0", "end", "conv1..pool3"), ("1", "edge", "fc1..fc2")]
    plan = json.loads(saved.read_text())
    assert [s["layers"][-1] for s in plan["plan"]["stages"]] == ["pool3", "fc2"]
    out = tmp_path / "bundle"
    run = ok(invoke("run", "zoo:chain", "--plan", saved, "-o", out, "--requests", "2", "--check"))
    check_line(run)
    bundle = ts.Bundle.load(out)
    assert [list(s.plan.layers) for s in bundle.stages] == [s["layers"] for s in plan["plan"]["stages"]]
    assert "hop stage 0 -> stage 1" in run.stdout
    both = invoke("run", "zoo:chain", "--plan", saved, "--split-at", "pool1")
    assert both.exit_code == 1 and "give either --plan or --split-at, not both" in both.output


# --------------------------------------------------- worker --next-key and run --workers
class CliWorkers:
    """`tvmsplit worker ...` processes (each in a session of its own), killed on exit."""

    def __init__(self, tmp_path):
        self.tmp_path, self.procs = tmp_path, []

    def start(self, *args: str) -> dict:
        ready = self.tmp_path / f"ready-{len(self.procs)}.json"
        proc = subprocess.Popen([*TVMSPLIT, "worker", *args, "--ready-file", str(ready)],
                                stderr=subprocess.PIPE, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, f"worker {args} not ready"
            time.sleep(0.05)
        return json.loads(ready.read_text())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()


def test_workers_started_by_hand_with_next_key_then_run_workers(keys, tmp_path):
    """`tvmsplit worker --bundle B --stage 1 --secure K` (binds `out`), `tvmsplit worker --stage 0
    --next ADDR --next-key worker`, then `tvmsplit run --workers eps.json --secure K --check`.
    A stage 0 told the wrong --next-key (the client's) cannot reach stage 1: nothing comes back."""
    bundle_dir = tmp_path / "b"
    ok(invoke("build", "zoo:chain", "--split-at", "pool1", "-o", bundle_dir))
    common = ["--bundle", str(bundle_dir), "--secure", str(keys)]
    with CliWorkers(tmp_path) as workers:
        last = workers.start(*common, "--stage", "1")
        assert last["out"] and last["stage"] == 1
        first = workers.start(*common, "--stage", "0", "--next", last["data"], "--next-key", "worker")
        eps = tmp_path / "eps.json"
        eps.write_text(json.dumps([first, last]))
        run = ok(invoke("run", "zoo:chain", "--split-at", "pool1", "-o", tmp_path / "client-copy",
                        "--workers", eps, "--secure", keys, "--requests", "3", "--check"))
        assert "starting 2 worker(s), CurveZMQ" in run.stderr and "local processes" not in run.stderr
        check_line(run)
        # the same workers served it: their counters moved (warm-up + traced run + 3 streamed)
        served = [_health(w["control"], keys)["served"] for w in (first, last)]
        assert served == [5, 5]
        # --next-key names the server key stage 0 expects: the client's key is the wrong one
        wrong = workers.start(*common, "--stage", "0", "--next", last["data"], "--next-key", "client")
        bundle = ts.Bundle.load(bundle_dir)
        from tvmsplit.check import random_inputs

        with ts.Pipeline(bundle, endpoints=[wrong, last], secure=keys, timeout_s=3) as p, \
                pytest.raises(ts.PipelineError, match="no answer"):
            p.run(random_inputs(bundle.inputs))
        assert _health(wrong["control"], keys)["served"] == 1   # it computed, and its send
        assert _health(last["control"], keys)["served"] == 5    # never got through


def _health(control: str, keys) -> dict:
    """Ask a --secure worker's control socket for its health, as an authorized client."""
    from zmq.auth import load_certificate

    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_publickey, s.curve_secretkey = load_certificate(keys / "client.key_secret")
        s.curve_serverkey = load_certificate(keys / "worker.key")[0]
        s.connect(control)
        s.send_json({"cmd": "health"})
        assert s.poll(10_000), f"no health answer from {control}"
        answer = s.recv_json()
        s.close()
        return answer
    finally:
        ctx.term()


# ------------------------------------------------------------------- testbed up --profile 4g
def _require_testbed() -> None:
    from tvmsplit.testbed import unavailable_reason

    reason = unavailable_reason(device=True, delay=True)
    if reason:
        warnings.warn(f"testbed CLI test skipped: {reason}", UserWarning, stacklevel=2)
        pytest.skip(f"testbed tier: {reason}")


_ACCEPT = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 7777)); srv.listen(8); print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    conn, _ = srv.accept(); conn.close()
"""
_CONNECT = """
import socket, sys, time
best = 1e9
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); s = socket.create_connection((sys.argv[1], 7777), timeout=10)
    best = min(best, time.perf_counter() - t); s.close()
print(best * 1e3)
"""


def test_testbed_up_4g_status_down(tmp_path):
    """`tvmsplit testbed up --profile 4g`: the device and edge namespaces exist, the link is rate
    shaped (tc tbf, both ways) and delayed by the link emulator: a TCP connect from the device to
    the edge takes one round trip, >= 2 x 25 ms. `down` removes it all (always run, in finally)."""
    _require_testbed()
    from tvmsplit.testbed.core import indices_in_use

    k = min(set(range(30, 40)) - set(indices_in_use()))

    def tb(*args):
        return subprocess.run([*TVMSPLIT, "testbed", *args, "--index", str(k)], check=False,
                              capture_output=True, text=True, timeout=300)

    server = None
    try:
        up = tb("up", "--profile", "4g", "--no-rpc", "--json")
        assert up.returncode == 0, up.stderr
        state = json.loads(up.stdout)
        assert state["up"] and state["profile"]["name"] == "4g"
        assert (state["profile"]["up_bps"], state["profile"]["down_bps"], state["profile"]["delay_ms"]) \
            == (8.8e6, 29.1e6, 25.0)
        assert state["link"] == "tun+linkemu"                     # the delay emulator is in the path
        assert "tbf" in state["qdisc"]["up"] and "tbf" in state["qdisc"]["down"]
        assert all(state["alive"].values()) and any(r["role"] == "linkemu" for r in state["processes"])
        assert "up 8.8 Mbit/s, down 29.1 Mbit/s, delay 25 ms each way" in up.stderr
        dev_ns, edge_ns = state["namespaces"]["device"], state["namespaces"]["edge"]
        edge_ip = state["addresses"]["edge"]
        server = subprocess.Popen(["ip", "netns", "exec", edge_ns, sys.executable, "-c", _ACCEPT,
                                   edge_ip, "3"], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(["ip", "netns", "exec", dev_ns, sys.executable, "-c", _CONNECT,
                                 edge_ip, "3"], check=False, capture_output=True, text=True,
                                timeout=60)
        assert client.returncode == 0, client.stderr
        rtt_ms = float(client.stdout)
        assert 45.0 <= rtt_ms < 500.0, f"device -> edge TCP connect took {rtt_ms:.1f} ms"
        assert server.wait(timeout=30) == 0
        st = tb("status", "--json")
        assert st.returncode == 0 and json.loads(st.stdout)[0]["up"]
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        down = tb("down")
    assert down.returncode == 0 and "removed" in down.stdout
    gone = json.loads(tb("status", "--json").stdout)[0]
    assert not gone["up"] and not gone["namespaces_present"]
