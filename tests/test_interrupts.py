"""SIGINT / SIGTERM during `tvmsplit build` and `tvmsplit run`: a real build in a subprocess, interrupted while TVM
compiles (after its progress line, not after a blind sleep from the start), stops promptly with
one line and exit code 130 / 143, leaves no temporary directory beside the output and no partial
build-cache entry, and leaves the bundle that was there byte-identical (``interrupts``); an
interrupted run stops its workers and removes its temporary bundle.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tvmsplit as ts
from tvmsplit import interrupts, zoo
from tvmsplit.compile import _store

REPO = Path(__file__).resolve().parent.parent
MODEL = "zoo:mobilenetv2"  # ~13 s to compile here: a signal 1.5 s in lands inside TVM


def snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    """A bundle (zoo chain) that the interrupted build would have replaced."""
    g = ts.load(zoo.make("chain"), name="chain")
    return ts.build_bundle(g, ts.plan_split(g), tmp_path_factory.mktemp("previous") / "b").path


def _interrupted_build(tmp_path: Path, previous: Path, signum: int):
    out = tmp_path / "out" / "b"
    shutil.copytree(previous, out)
    before = snapshot(out)
    cache = tmp_path / "cache"
    env = dict(os.environ, TVMSPLIT_CACHE=str(cache), TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=str(REPO))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tvmsplit", "build", MODEL, "-o", str(out)],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # the stage's progress line: it is compiling now
            seen.append(line)
            if "stage 1/1" in line:
                break
        else:
            pytest.fail(f"no progress line: {''.join(seen)}")
        time.sleep(1.5)  # into TVM: from_onnx, FoldConstant, lowering
        assert proc.poll() is None, "the build finished before it could be interrupted"
        rest, rc, elapsed = _signal_and_wait(proc, signum)
    finally:
        _reap(proc)
    return out, before, cache, rc, rest, elapsed


def _signal_and_wait(proc, signum) -> tuple[str, int, float]:
    """Send ``signum``; the rest of its stderr, its exit code and how long it took to exit."""
    sent = time.monotonic()
    proc.send_signal(signum)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=30)
    return rest, rc, time.monotonic() - sent


def _reap(proc) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_build_stops_cleans_up_and_keeps_the_previous_bundle(
        tmp_path, previous, signum, code):
    out, before, cache, rc, stderr, elapsed = _interrupted_build(tmp_path, previous, signum)
    name = signal.Signals(signum).name
    assert rc == code, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"interrupted ({name}): build stopped"), stderr
    assert "left as it was" in lines[-1] and "Traceback" not in stderr, stderr
    assert elapsed < 5, f"{name} took {elapsed:.1f} s to stop the build"
    left = sorted(p.name for p in out.parent.iterdir() if p.name != out.name)
    assert left == [], f"left beside the output: {left}"
    assert snapshot(out) == before, "the previous bundle was modified"
    ts.Bundle.load(out)
    cached = sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.exists() else []
    assert cached == [], f"an interrupted build left cache files: {cached}"
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary files left in TMPDIR"


def _ours(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (a test's own directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmd:
            found.append(cmd)
    return found


def test_sigterm_during_run_stops_the_workers_and_removes_the_temporary_bundle(tmp_path):
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TVMSPLIT_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path / "tmp"),
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "tvmsplit", "run", "zoo:chain", "--split-at",
                             "pool1", "--requests", "1000000"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "starting 2 worker(s)" in line:
                break
        time.sleep(2.0)  # streaming requests through the workers
        assert proc.poll() is None
        assert _ours(str(tmp_path / "tmp")), "no worker serves the temporary bundle"
        rest, rc, elapsed = _signal_and_wait(proc, signal.SIGTERM)
    finally:
        _reap(proc)
    assert rc == 143, rest
    assert rest.strip().splitlines()[-1] == ("interrupted (SIGTERM): run stopped, temporary files "
                                             "removed"), rest
    assert elapsed < 5, f"SIGTERM took {elapsed:.1f} s to stop the run"
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary files left in TMPDIR"
    deadline = time.monotonic() + 5
    while _ours(str(tmp_path / "tmp")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ours(str(tmp_path / "tmp")) == [], "workers outlived the run"


def test_a_cache_entry_is_complete_or_absent(tmp_path, monkeypatch):
    """Interrupted while the library is copied into the cache: no entry, no temporary file."""
    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF" + b"x" * 4096)
    cached = tmp_path / "cache" / "builds" / "abc.so"

    def interrupted_copy(src, dst):
        Path(dst).write_bytes(b"\x7fELF")  # half-written
        raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(shutil, "copyfile", interrupted_copy)
    with pytest.raises(interrupts.Interrupted):
        _store(cached, library, None)
    assert sorted(p.name for p in cached.parent.iterdir()) == []
    monkeypatch.undo()
    _store(cached, library, None)
    assert sorted(p.name for p in cached.parent.iterdir()) == ["abc.so"]
    assert cached.read_bytes() == library.read_bytes()


def test_signals_are_recorded_only_inside_catching_and_raise_once():
    """The handler is installed by ``catching`` (never at import) and restored after it; a
    second signal during the clean-up of the first does not raise again; ``check`` re-raises a
    recorded one (one that TVM swallowed); ``deferred`` records without raising."""
    default_int, default_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts.catching((signal.SIGINT, signal.SIGTERM)):
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is not default_term
        with interrupts.deferred():
            handler(signal.SIGTERM, None)  # recorded, not raised
        assert interrupts.received() == signal.SIGTERM
        handler(signal.SIGINT, None)  # a second signal: no exception during clean-up
        with pytest.raises(interrupts.Interrupted) as info:
            interrupts.check()
        assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert interrupts.received() is None
    assert signal.getsignal(signal.SIGINT) is default_int
    assert signal.getsignal(signal.SIGTERM) is default_term
    interrupts.check()  # nothing recorded any more
