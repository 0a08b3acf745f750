"""The launch interface (tvmsplit/runtime/launch.py): one WorkerSpec and one option parser for the
CLI, ``python -m``, the Pipeline and the testbed; spawn; launch order; launchers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest

from tvmsplit import Pipeline, PipelineError
from tvmsplit.runtime import launch
from tvmsplit.runtime.launch import (GivenEndpoints, LaunchError, LocalLauncher, WorkerSpec,
                                     launch_order, next_addresses, spawn)

from chain_bundles import chain_bundles
from cli_helpers import invoke, ok

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return chain_bundles(tmp_path_factory)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SPECS = [
    WorkerSpec("b", 0),
    WorkerSpec("/x/bundle", 3, bind="tcp://10.0.0.1:5555", next=("tcp://a:1", "tcp://b:2"),
               out="tcp://10.0.0.1:0", control=None, ready_file="/tmp/r.json",
               await_library=True, parent_pid=17, secure="/keys", next_key=("worker", "client")),
]


@pytest.mark.parametrize("spec", SPECS)
def test_argv_and_from_argv_are_inverse(spec):
    assert WorkerSpec.from_argv(spec.argv()) == spec


def test_bad_worker_options_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as err:
        WorkerSpec.from_argv(["--stage", "x"])
    assert err.value.code == 2
    assert "--bundle" in capsys.readouterr().err


def test_replace_names_unknown_fields():
    with pytest.raises(TypeError, match="nxt"):
        WorkerSpec("b", 0).replace(nxt=())


def test_the_cli_and_python_m_share_one_parser(monkeypatch):
    """`tvmsplit worker` forwards its arguments to the worker's main, which parses them into a
    WorkerSpec with the one parser; the help texts are the same."""
    seen = []
    original = WorkerSpec.from_argv.__func__

    def spy(cls, argv=None, prog="x"):
        spec = original(cls, argv, prog)
        seen.append(spec)
        raise SystemExit(0)  # stop before a worker starts

    monkeypatch.setattr(WorkerSpec, "from_argv", classmethod(spy))
    argv = SPECS[1].argv()
    ok(invoke("worker", *argv))
    assert seen == [SPECS[1]]
    cli_help = invoke("worker", "--help").output
    module_help = subprocess.run([sys.executable, "-m", "tvmsplit.runtime.worker", "--help"],
                                 capture_output=True, text=True, check=True).stdout
    options = lambda text: text[text.index("options:"):]  # noqa: E731 - usage wraps by prog
    assert cli_help.startswith("usage: tvmsplit worker")
    assert options(cli_help) == options(module_help)
    for option in ("--next-key", "--parent-pid", "--await-library", "deploy"):
        assert option in cli_help


def test_launch_order_is_last_stage_first_and_refuses_backward_routes(built):
    plan = built["bundles"]["chain3"].plan
    assert launch_order(plan) == [2, 1, 0]
    assert next_addresses(plan, 1, {2: "tcp://s2"}, "tcp://client") == ["tcp://s2"]
    assert next_addresses(plan, 2, {}, "tcp://client") == ["tcp://client"]
    assert next_addresses(plan, 2, {}, None) == []  # the worker binds "out" instead

    class Backward:
        class S:
            def __init__(self, index, to):
                self.index, self.sends = index, [type("R", (), {"to": to})()]
        stages = [S(0, 1), S(1, 0)]

    with pytest.raises(LaunchError, match=r"\(1, 0\)"):
        launch_order(Backward())


def test_spawn_runs_a_worker_that_a_client_can_use(built, tmp_path):
    bundle = built["bundles"]["chain2"]
    spec = WorkerSpec(str(bundle.path), 1)
    with spawn(spec, tmp_path) as proc:
        info = proc.wait_ready(60)
        assert info["stage"] == 1 and info["pid"] == proc.pid and info["out"] is not None
        assert json.loads(open(proc.spec.ready_file).read()) == info
        assert os.getpgid(proc.pid) == proc.pid  # its own process group
        with spawn(WorkerSpec(str(bundle.path), 0, next=(info["data"],)), tmp_path) as first:
            first_info = first.wait_ready(60)
            x, _, _ = built["expected"]["chain"]
            eps = [first_info, info]
            with Pipeline(bundle, endpoints=eps) as p:
                y, _ = p.run(x)
                assert isinstance(p.launcher, GivenEndpoints)
            ort = built["expected"]["chain"][2]
            np.testing.assert_allclose(y["output"], ort["output"], rtol=1e-4, atol=1e-5)
    assert not _alive(proc.pid) and not _alive(first.pid)


def test_a_worker_that_fails_to_start_is_reported_with_its_log(tmp_path):
    with spawn(WorkerSpec(str(tmp_path / "nothing"), 0), tmp_path) as proc:
        with pytest.raises(LaunchError, match="exited during start with exit code 2.*not a bundle"):
            proc.wait_ready(30)


def test_pipeline_takes_a_launcher(built):
    """The default launcher is local; one given explicitly is used as it is."""
    bundle = built["bundles"]["chain2"]
    x, _, _ = built["expected"]["chain"]
    mine = LocalLauncher(start_timeout_s=60)
    with Pipeline(bundle, launcher=mine) as p:
        assert p.launcher is mine and mine.run_dir.is_dir()
        pids = [e["pid"] for e in p.endpoints]
        assert all(_alive(pid) for pid in pids)
        p.run(x)
        p.restart()  # the same launcher starts new workers
        assert [e["pid"] for e in p.endpoints] != pids
        p.run(x)
    assert not mine._procs and mine._run_dir is None
    with pytest.raises(PipelineError, match="endpoints or a launcher"):
        Pipeline(bundle, endpoints=[], launcher=mine)


def test_worker_env_uses_the_runtime_only_library(monkeypatch):
    monkeypatch.delenv("TVM_USE_RUNTIME_LIB", raising=False)
    assert launch.worker_env()["TVM_USE_RUNTIME_LIB"] == "1"
    assert launch.worker_env({"TVM_USE_RUNTIME_LIB": "0"})["TVM_USE_RUNTIME_LIB"] == "0"


def test_a_killed_clients_run_directory_is_removed_by_the_next_client(built, tmp_path):
    """The client dies with SIGKILL (no finalizer runs): its workers exit (--parent-pid) and the
    next local launcher removes the directory it left."""
    import signal
    import tempfile
    import textwrap
    import time
    from pathlib import Path

    script = textwrap.dedent(f"""
        import sys, time
        from tvmsplit import Pipeline
        p = Pipeline({str(built["bundles"]["chain2"].path)!r})
        print(p.launcher.run_dir, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    left = Path(child.stdout.readline().strip())
    assert left.is_dir() and left.name.startswith(f"tvmsplit-workers-{child.pid}-")
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert left.is_dir()  # nobody cleaned up
    launcher = LocalLauncher()
    try:
        assert launcher.run_dir != left and not left.exists()
    finally:
        launcher.release()
    deadline = time.monotonic() + 10  # its workers notice their parent is gone
    while time.monotonic() < deadline and [c for c in psutil.process_iter(["cmdline"])
                                           if str(left) in " ".join(c.info["cmdline"] or [])]:
        time.sleep(0.2)
    assert not [c for c in psutil.process_iter(["cmdline"])
                if str(left) in " ".join(c.info["cmdline"] or [])]
    assert Path(tempfile.gettempdir()) == left.parent


def test_worker_help_in_process_leaves_this_process_env_alone(monkeypatch):
    """`tvmsplit worker --help` in a process that later compiles must not switch it to the
    runtime-only TVM library (that broke every later TVM import in the test session)."""
    import importlib

    monkeypatch.delenv("TVM_USE_RUNTIME_LIB", raising=False)
    importlib.import_module("tvmsplit.runtime.worker")
    ok(invoke("worker", "--help"))
    assert "TVM_USE_RUNTIME_LIB" not in os.environ
