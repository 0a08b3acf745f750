"""`build --check [--input FILE]` and `run --check` report per tensor, say where, and use the input
they are given (issue 12 part 6)."""
from __future__ import annotations

import re

import numpy as np

from cli_helpers import invoke, ok


def tensor_lines(stdout: str) -> dict[str, str]:
    return {ln.split(":")[0].strip(): ln for ln in stdout.splitlines() if ln.startswith("  ")}


def test_build_check_with_an_input_file_reports_every_tensor(tmp_path):
    x = np.random.default_rng(5).random((1, 3, 32, 32), np.float32)
    np.save(tmp_path / "x.npy", x)
    out = ok(invoke("build", "zoo:resnet", "--split-at", "block2_add", "-o", tmp_path / "b",
                    "--check", "--input", tmp_path / "x.npy")).stdout
    lines = tensor_lines(out)
    assert set(lines) == {"block2_relu", "output"}, out
    for line in lines.values():
        assert re.search(r"max abs err \S+ at \[\d+(,\d+)*\] .* elementwise max rel err \S+ at "
                         r"\[\d+(,\d+)*\], \S+ of tolerance$", line), line
    assert out.strip().splitlines()[-1].endswith("OK")
    np.savez(tmp_path / "x.npz", input=x)
    again = ok(invoke("build", "zoo:resnet", "--split-at", "block2_add", "-o", tmp_path / "b",
                      "--check", "--input", tmp_path / "x.npz")).stdout
    assert tensor_lines(again) == lines  # the same input by name: the same errors, same places


def test_build_check_uses_the_input_it_is_given(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 16, 16), np.float32))
    result = invoke("build", "zoo:chain", "-o", tmp_path / "b", "--check",
                    "--input", tmp_path / "bad.npy")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model chain: input 'input' is float32[1, 3, 16, 16], expected float32[1, 3, 32, 32]")


def test_build_input_without_check_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    result = invoke("build", "zoo:chain", "-o", tmp_path / "b", "--input", tmp_path / "x.npy")
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: --input {tmp_path / 'x.npy'} is what --check feeds "
                                     "the stages; add --check")
    assert not (tmp_path / "b").exists()


def test_a_failed_check_says_which_tensor_and_where(tmp_path):
    result = invoke("build", "zoo:chain", "--split-at", "pool1", "-o", tmp_path / "b",
                    "--check", "--tolerance", "1e-30")
    assert result.exit_code == 1
    stage_lines = [ln for ln in result.stdout.splitlines() if ln.startswith("check stage")]
    assert stage_lines and all(ln.endswith("FAILED") for ln in stage_lines), result.stdout
    assert "element(s) beyond it" in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("check vs onnxruntime") and last.endswith("FAILED")


def test_run_check_reports_the_output_tensor(tmp_path):
    out = ok(invoke("run", "zoo:chain", "--split-at", "pool1", "--check")).stdout
    assert "output" in tensor_lines(out) and out.strip().endswith("OK")
