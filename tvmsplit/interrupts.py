"""Stopping a build on SIGINT/SIGTERM: promptly, and without losing the signal inside TVM.

Why a plain Ctrl-C did not stop a build: Python runs a signal handler only in the main thread
and only between bytecodes, so a signal that arrives while TVM's C++ runs is handled when C++
next calls back into Python. TVM calls back into Python all the time (``tvm.tirx.build``'s
codegen, passes written in Python), and the KeyboardInterrupt raised there unwinds through C++
as a ``tvm::Error``; Relax's ``FoldConstant`` builds each foldable call inside a
``try { build(...) } catch (const tvm::Error&) { /* skip */ }``, so the interrupt was swallowed
there and the build carried on to the end, exit code 0.

The fix has two halves:
- ``catching(signals)``: while it is active, SIGINT/SIGTERM are *recorded* (sticky) as well as
  raised as KeyboardInterrupt, so a swallowed interrupt is not lost. The CLI uses it for SIGINT
  and SIGTERM around ``build``, ``run`` and ``demo`` (a handler is installed only there, never
  at import); ``build.build_bundle`` uses it for SIGINT alone, and only where SIGINT still has
  Python's default handler, so Ctrl-C also stops ``tvmsplit.build_bundle`` called from Python.
  Only the first signal raises: a second one must not break into the clean-up of the first.
- ``check()`` raises the recorded interrupt again; ``watching_passes()`` calls it before every
  TVM pass (a PassInstrument), and the build calls it between its TVM calls and before anything
  is cached or swapped into place. A build therefore stops at the next pass boundary: the bound
  is the longest single pass or C++ call (LLVM code generation of a whole stage, typically the
  last 1-2 s of a stage's build), not the whole build. The compiler that links a stage is a
  child process: the interrupt reaches Python while it waits, and the compiler is killed.
- ``deferred()`` marks a critical section (renaming a bundle or a cache entry into place):
  a signal in it is recorded, and raised by the ``check()`` after it.

The alternative, compiling in a child process that is killed, would stop even inside LLVM, but
costs a second TVM import (~1 s) and re-deriving the stage per build; not worth it for a bound
of a couple of seconds.

An interrupt is re-raised as ``Interrupted`` (a KeyboardInterrupt) that names the signal, so the
CLI can exit 130 for SIGINT and 143 for SIGTERM.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_received: list[int] = []  # the first signal recorded by the handler of ``catching``
_deferring: list[bool] = []  # inside ``deferred``: record, do not raise


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM that stopped the work; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.written = None  # set by ``bundle.writing`` when it came after the bundle was in place

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


def _handler(signum, _frame) -> None:
    # Only the first signal raises: later ones (a second Ctrl-C, SIGTERM after SIGINT) must not
    # break into the clean-up that the first one started (removing temporary directories,
    # stopping workers). A first one that TVM swallowed is raised again by ``check``.
    if _received:
        return
    _received.append(signum)
    if not _deferring:
        raise Interrupted(signum)


def received() -> int | None:
    """The signal recorded since the outermost ``catching`` began, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise ``Interrupted`` if a signal was recorded (even one that TVM swallowed)."""
    if _received:
        raise Interrupted(_received[0])


@contextmanager
def deferred() -> Iterator[None]:
    """A critical section (e.g. swapping a bundle into place): a signal arriving in it is
    recorded but not raised until ``check`` is called after it."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()


@contextmanager
def catching(signals=(signal.SIGINT,), only_default: bool = False) -> Iterator[None]:
    """Record ``signals`` and raise them as ``Interrupted`` while the block runs (main thread
    only; elsewhere it does nothing). With ``only_default``, a signal whose handler is not
    Python's default one (someone else's, or an outer ``catching``) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = (signal.default_int_handler, signal.SIG_DFL)
    previous = {}
    for signum in signals:
        current = signal.getsignal(signum)
        if current is _handler or (only_default and current not in defaults):
            continue
        previous[signum] = signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if previous and not any(signal.getsignal(s) is _handler
                                for s in (signal.SIGINT, signal.SIGTERM)):
            _received.clear()  # the outermost one: the next command starts afresh


@contextmanager
def watching_passes() -> Iterator[None]:
    """Run the block under a PassContext like the current one plus an instrument that calls
    ``check()`` before every pass, so a TVM build stops at the next pass after a signal."""
    import tvm
    from tvm.ir.instrument import pass_instrument

    @pass_instrument
    class _StopOnSignal:
        def run_before_pass(self, _mod, _info) -> None:
            check()

    cur = tvm.transform.PassContext.current()
    ctx = tvm.transform.PassContext(
        opt_level=cur.opt_level, required_pass=list(cur.required_pass),
        disabled_pass=list(cur.disabled_pass), config=dict(cur.config),
        instruments=[*cur.instruments, _StopOnSignal()])
    with ctx:
        yield
