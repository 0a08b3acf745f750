"""The ARM end device's file system: a Debian arm64 sysroot, made and run without emulation setup.

* ``mmdebstrap --variant=extract --architectures=arm64`` downloads and unpacks the Debian packages
  (and their dependencies) without running any aarch64 code: no binfmt, no chroot.
* The host's pip installs the aarch64 wheels (TVM runtime, numpy, pyzmq, psutil, cloudpickle) into
  ``SYSROOT/opt/tvmsplit-site`` (``--platform manylinux_2_28_aarch64 --only-binary=:all:``).
* TVM's compiler library (``tvm/lib/libtvm_compiler.so``, 240 MB) is deleted: the device runs
  runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, set by :meth:`Sysroot.env`), as a real Pi would.
* The host's Python byte-compiles the device's standard library and site packages (the same
  CPython 3.11 magic), so the emulated interpreter never compiles (slow under qemu) nor writes.
* One short emulated run (``qemu-aarch64-static -L SYSROOT``) checks the imports before the
  sysroot is marked complete.

It is cached in ``$TVMSPLIT_TESTBED_CACHE`` (default ``~/.cache/tvmsplit/testbed``) as
``arm64-sysroot-<key>``, where the key hashes the package and wheel lists. Everything is built
in a temporary directory beside it; the marker file ``.tvmsplit-sysroot.json`` is written last and
the directory renamed into place, so a half-built sysroot is never used. A lock file serialises
concurrent builders. ``$TVMSPLIT_TESTBED_SYSROOT`` names an exact directory instead.
tvmsplit itself is not installed: the device's ``PYTHONPATH`` points at this checkout.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .profiles import TestbedError

SUITE = "bookworm"
# Minimal set: python3.11-minimal has the interpreter, libpython3.11-stdlib the rest of the
# standard library (ctypes, ssl, ...); TVM's runtime library needs libstdc++. mmdebstrap adds
# their dependencies (libc6, libgcc-s1, zlib1g, libffi8, libssl3, ...): about 75 MB.
# The native worker (CMakeLists.txt) is cross-built against this same sysroot and run in it:
# libzmq (with libsodium's CURVE) and the header-only cppzmq / nlohmann-json, plus libc6-dev
# that they pull in (build-time only: the worker needs libzmq5 and libsodium23 at run time).
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6",
                   "libzmq3-dev", "libsodium-dev", "cppzmq-dev", "nlohmann-json3-dev")
WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "pyzmq", "psutil",
          "cloudpickle")
SITE = "opt/tvmsplit-site"          # inside the sysroot
PYTHON = "usr/bin/python3.11"       # inside the sysroot
MARKER = ".tvmsplit-sysroot.json"
PRUNE = ("tvm/lib/libtvm_compiler.so",)  # under SITE: not needed by a runtime-only device
FORMAT = 2                          # bump when the build steps change
SMOKE = ("import platform, numpy, zmq, psutil, tvm; from tvm.runtime.vm import VirtualMachine; "
         "print(platform.machine(), numpy.__version__, zmq.zmq_version(), psutil.__version__)")


@dataclass(frozen=True)
class Sysroot:
    """A complete sysroot: ``path``, the ``qemu`` binary that runs it, the marker's ``info``."""

    path: Path
    qemu: str
    info: dict

    @property
    def python(self) -> str:
        return str(self.path / PYTHON)

    def command(self, *args: str) -> list[str]:
        """``qemu-aarch64-static -L SYSROOT SYSROOT/usr/bin/python3.11 ARGS...``"""
        return [self.qemu, "-L", str(self.path), self.python, *args]

    def env(self, repo: str | os.PathLike | None = None, **extra: str) -> dict[str, str]:
        """A clean environment for the device's Python (nothing of the host's Python leaks in)."""
        keep = {k: v for k, v in os.environ.items()
                if k in ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "TZ")}
        paths = [f"/{SITE}"] + ([str(repo)] if repo else [])
        return {**keep, "PYTHONPATH": os.pathsep.join(paths), "PYTHONNOUSERSITE": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "TVM_USE_RUNTIME_LIB": "1",
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **extra}


def cache_dir() -> Path:
    return Path(os.environ.get("TVMSPLIT_TESTBED_CACHE")
                or Path.home() / ".cache" / "tvmsplit" / "testbed")


def sysroot_key(packages=DEBIAN_PACKAGES, wheels=WHEELS, suite=SUITE) -> str:
    blob = json.dumps({"format": FORMAT, "suite": suite, "arch": "arm64",
                       "packages": sorted(packages), "wheels": sorted(wheels),
                       "prune": sorted(PRUNE)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sysroot_path(key: str | None = None) -> Path:
    if os.environ.get("TVMSPLIT_TESTBED_SYSROOT"):
        return Path(os.environ["TVMSPLIT_TESTBED_SYSROOT"])
    return cache_dir() / f"arm64-sysroot-{key or sysroot_key()}"


def find_qemu() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def missing_tools(building: bool) -> list[str]:
    """What is missing to run (and, with ``building``, to build) the device: apt package names."""
    out = [] if find_qemu() else ["qemu-user-static"]
    if building and not shutil.which("mmdebstrap"):
        out.append("mmdebstrap")
    return out


def read_marker(path: Path, key: str | None = None) -> dict | None:
    """The marker of a complete sysroot at ``path`` (with ``key``, of that key), else None."""
    try:
        info = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or (key is not None and info.get("key") != key):
        return None
    if not (path / PYTHON).exists() or not (path / SITE / "tvm").is_dir():
        return None
    return info


def _run(cmd: list[str], what: str, timeout: float, env: dict | None = None) -> str:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env=env, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{what} did not finish within {timeout:g} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-3000:]
        raise TestbedError(f"{what} failed (exit code {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def ensure_sysroot(*, rebuild: bool = False, log=None, timeout_s: float = 900.0) -> Sysroot:
    """The cached sysroot, built first when missing (or with ``rebuild``). ``log(str)`` gets
    progress lines. Raises TestbedError naming what is missing or what failed."""
    log = log or (lambda _msg: None)
    key = sysroot_key()
    path = sysroot_path(key)
    qemu = find_qemu()
    info = None if rebuild else read_marker(path, None if _explicit() else key)
    if info is not None and qemu:
        return Sysroot(path, qemu, info)
    missing = missing_tools(building=True)
    if missing:
        raise TestbedError(f"the ARM device needs {' and '.join(missing)}: "
                           f"apt-get install -y {' '.join(missing)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same sysroot
        info = None if rebuild else read_marker(path, None if _explicit() else key)
        if info is None:
            info = _build(path, key, qemu, log, timeout_s)
    return Sysroot(path, qemu, info)


def _explicit() -> bool:
    return bool(os.environ.get("TVMSPLIT_TESTBED_SYSROOT"))


def _build(path: Path, key: str, qemu: str, log, timeout_s: float) -> dict:
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    left = lambda: max(10.0, deadline - time.monotonic())  # noqa: E731
    tmp = path.parent / f".{path.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        log(f"sysroot: mmdebstrap {SUITE} arm64 ({', '.join(DEBIAN_PACKAGES)}) -> {tmp}")
        cmd = ["mmdebstrap", "--quiet", "--variant=extract", "--architectures=arm64",
               f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(tmp)]
        if os.environ.get("TVMSPLIT_TESTBED_MIRROR"):
            cmd.append(os.environ["TVMSPLIT_TESTBED_MIRROR"])
        _run(cmd, "mmdebstrap", left())
        t_debs = time.monotonic() - t0
        log(f"sysroot: pip install aarch64 wheels ({', '.join(WHEELS)})")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-warn-script-location", "--target", str(tmp / SITE),
              "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
              "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:", *WHEELS],
             "pip install (aarch64 wheels)", left())
        t_pip = time.monotonic() - t0 - t_debs
        for rel in PRUNE:
            (tmp / SITE / rel).unlink(missing_ok=True)
        log("sysroot: byte-compiling the device's Python files on the host")
        # Errors are expected (test files with deliberate syntax errors): ignore the exit code.
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                        str(tmp / "usr/lib/python3.11"), str(tmp / SITE)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=left(), check=False)
        log("sysroot: checking the imports under qemu")
        probe = Sysroot(tmp, qemu, {})
        env = probe.env()
        env["PYTHONPATH"] = str(tmp / SITE)  # the tree is not at its final path yet
        smoke = _run(probe.command("-c", SMOKE), "the emulated Python (import check)", left(),
                     env).split()
        if not smoke or smoke[0] != "aarch64":
            raise TestbedError(f"the emulated Python reports machine {smoke[:1]}, not aarch64")
        info = {"key": key, "suite": SUITE, "packages": list(DEBIAN_PACKAGES),
                "wheels": list(WHEELS), "pruned": list(PRUNE), "numpy": smoke[1], "libzmq": smoke[2],
                "psutil": smoke[3], "built_at": time.time(),
                "seconds": {"debs": round(t_debs, 1), "pip": round(t_pip, 1),
                            "total": round(time.monotonic() - t0, 1)}}
        (tmp / MARKER).write_text(json.dumps(info, indent=1))  # the marker goes in last
        if path.exists():
            shutil.rmtree(path)  # an incomplete or outdated one
        os.replace(tmp, path)
        log(f"sysroot: ready at {path} in {info['seconds']['total']:.1f} s")
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
