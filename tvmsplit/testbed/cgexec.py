"""Run a command inside cgroups: ``python cgexec.py --cgroup DIR [--cgroup DIR ...] -- CMD ...``.

Writes its own pid into each ``DIR/cgroup.procs`` (cgroup v2: one directory; v1: one per
controller hierarchy, e.g. ``/sys/fs/cgroup/cpu/X``, ``.../cpuset/X``, ``.../memory/X``), then
``exec``s ``CMD``: the command and everything it starts run inside the limits from their first
instruction, nothing heavy runs uncapped. Standard library only and no package imports, so
:mod:`tvmsplit.testbed.cgroup` runs it by its path (``python /path/cgexec.py``; ``python -m
tvmsplit.testbed.cgexec`` works too but imports the package first).

It must run *before* ``ip netns exec``: that command remounts ``/sys`` in a private mount
namespace, where ``/sys/fs/cgroup`` is no longer mounted. Exit code 126 (with one line on stderr)
when a cgroup cannot be joined, 127 when the command is not found.
"""
from __future__ import annotations

import os
import sys


def join(dirs: list[str], pid: int = 0) -> None:
    """Move ``pid`` (0: this process) into every cgroup directory of ``dirs``."""
    for d in dirs:
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(pid or os.getpid()))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: cgexec.py --cgroup DIR [--cgroup DIR ...] -- CMD [ARG ...]"
    if "--" not in argv:
        print(usage, file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1:]
    dirs = []
    while opts:
        if opts[0] != "--cgroup" or len(opts) < 2:
            print(usage, file=sys.stderr)
            return 2
        dirs.append(opts[1])
        opts = opts[2:]
    if not dirs or not cmd:
        print(usage, file=sys.stderr)
        return 2
    try:
        join(dirs)
    except OSError as exc:
        print(f"cgexec: cannot join cgroup ({exc}); is it created and are you root?",
              file=sys.stderr)
        return 126
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"cgexec: cannot run {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
