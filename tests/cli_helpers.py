"""Calling the click CLI in-process (tests' helper): ``invoke`` runs a command, ``ok`` insists it
succeeded. One definition for every cli-tier module; importing it does not import TVM."""
from __future__ import annotations

from click.testing import CliRunner, Result

from tvmsplit.cli import cli


def invoke(*args, **kwargs) -> Result:
    """``tvmsplit ARGS...`` through click's CliRunner; each argument is ``str()``-ed, so paths and
    numbers may be passed as they are. Keyword arguments (``terminal_width=``, ``input=``,
    ``env=``, ...) go to ``CliRunner.invoke`` as they are. The result is returned whatever the
    exit code."""
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="tvmsplit", **kwargs)


def ok(result: Result) -> Result:
    """The ``result`` of a command that must have succeeded: exit 0 and no exception (else the
    assertion shows the exit code, the exception and the output)."""
    assert result.exit_code == 0 and result.exception is None, \
        f"exit={result.exit_code} exception={result.exception!r}\n{result.output}"
    return result
