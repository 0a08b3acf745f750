"""Bad input, as a user meets it on the command line (and, for bundles, through the Python API).

Every bad input must give ONE line on stderr, starting with ``error: ``, naming the bad value and
a fix, exit code 1, no traceback, and nothing half-written: the ``-o`` directory does not exist
afterwards, or, when it already held a good bundle, that bundle is byte-for-byte unchanged and
still loads; no hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` directories are left beside it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from click.testing import Result
from onnx import TensorProto, helper

import tvmsplit
import tvmsplit.compile as tcompile
from tvmsplit import zoo
from tvmsplit.errors import BuildError, BundleError

from cli_helpers import invoke

CHAIN_LAYERS = ["conv1", "conv2", "pool1", "conv3", "conv4", "pool2", "conv5", "pool3", "fc1", "fc2"]
KNOWN_TARGETS = ["x86_64", "rpi3b", "rpi4b", "cuda-edge", "jetson-orin"]


# ---- helpers ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _build_cache(tmp_path_factory, monkeypatch):
    """A tmp-based build cache shared by this session's tests (never ~/.cache)."""
    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "tvmsplit-cache"))


def assert_user_error(result: Result, *mentions: str, progress_before: bool = False) -> str:
    """A clean user error: exit 1, no traceback, exactly one ``error: `` line on stderr.

    With ``progress_before`` the error may follow progress lines (a build that failed mid-way);
    otherwise it must be the only line. Returns the message (without ``error: ``).
    """
    detail = f"exit={result.exit_code} exception={result.exception!r}\nstdout:\n{result.stdout}\n" \
             f"stderr:\n{result.stderr}"
    assert isinstance(result.exception, SystemExit), f"uncaught exception\n{detail}"
    assert result.exit_code == 1, detail
    assert "Traceback" not in result.output, detail
    lines = result.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, detail
    if progress_before:
        assert lines[-1] == errors[0], detail
    else:
        assert lines == errors, f"stderr must be the one error line\n{detail}"
    msg = errors[0][len("error: "):]
    for m in mentions:
        assert m in msg, f"{m!r} not in error message {msg!r}"
    return msg


def snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def assert_no_temp_dirs(out: Path) -> None:
    leftovers = [p.name for p in out.parent.iterdir()
                 if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-"))]
    assert leftovers == [], f"temporary directories left beside {out}: {leftovers}"


def assert_nothing_written(out: Path, before: dict[str, str] | None = None) -> None:
    """``out`` is absent (before is None) or still holds exactly the bundle it held, loadable."""
    if before is None:
        assert not out.exists(), f"{out} was created: {sorted(p.name for p in out.iterdir())}"
    else:
        assert snapshot(out) == before, f"the existing bundle in {out} was modified"
        tvmsplit.Bundle.load(out)
    assert_no_temp_dirs(out)


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory) -> Path:
    """A good 3-stage chain bundle, built once through the CLI."""
    out = tmp_path_factory.mktemp("good") / "bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "tvmsplit-cache"))
        result = invoke("build", "zoo:chain", "--split-at", "pool1,pool2", "-o", out)
    assert result.exit_code == 0, result.output
    tvmsplit.Bundle.load(out)
    return out


@pytest.fixture(params=["fresh", "existing-bundle"])
def out_dir(request, tmp_path, good_bundle):
    """(-o directory, snapshot of what it held before or None). Runs each case twice: with a new
    directory and with a directory that already holds a good bundle."""
    out = tmp_path / "out"
    if request.param == "fresh":
        return out, None
    shutil.copytree(good_bundle, out)
    return out, snapshot(out)


@pytest.fixture(scope="module")
def chain_onnx(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "chain.onnx"
    result = invoke("zoo", "chain", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, initializer=list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


# ---- 1. unreadable model files ------------------------------------------------------------------
@pytest.fixture
def truncated_onnx(tmp_path, chain_onnx) -> Path:
    data = chain_onnx.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def text_onnx(tmp_path) -> Path:
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\njust some text\n")
    return path


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_model_build(kind, request, out_dir):
    path = request.getfixturevalue(f"{kind}_onnx")
    out, before = out_dir
    msg = assert_user_error(invoke("build", path, "-o", out), str(path.name))
    assert "re-export" in msg
    assert_nothing_written(out, before)


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_model_inspect(kind, request):
    path = request.getfixturevalue(f"{kind}_onnx")
    msg = assert_user_error(invoke("inspect", path), str(path.name))
    assert "re-export" in msg
    assert_user_error(invoke("inspect", path, "--json"), str(path.name))


def test_missing_model_file_build(tmp_path, out_dir):
    out, before = out_dir
    missing = tmp_path / "nowhere" / "model.onnx"
    assert_user_error(invoke("build", missing, "-o", out), str(missing))
    assert_nothing_written(out, before)


def test_missing_model_file_says_what_model_may_be(tmp_path, monkeypatch):
    """`tvmsplit inspect chain` (forgot the zoo: prefix): the error must say how to fix it, i.e.
    that MODEL is a path to an .onnx file or zoo:NAME (errors.py: every error carries a fix)."""
    monkeypatch.chdir(tmp_path)
    msg = assert_user_error(invoke("inspect", "chain"), "'chain'")
    assert "zoo:" in msg, f"no fix in {msg!r}"


def test_unknown_zoo_model(tmp_path, out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chian", "-o", out), "chian")
    for name in zoo.names():
        assert name in msg
    assert_nothing_written(out, before)


# ---- 2. unsupported operators -----------------------------------------------------------------
@pytest.fixture(scope="module")
def unsupported_onnx(tmp_path_factory) -> Path:
    """Celu and Det: standard ONNX ops (opset 17) that TVM 0.27's Relax importer lacks."""
    from tvm.relax.frontend.onnx import onnx_frontend

    supported = set(onnx_frontend._get_convert_map())
    assert "Celu" not in supported and "Det" not in supported and "Relu" in supported
    model = _model(
        [helper.make_node("Celu", ["x"], ["a"], name="celu_first"),
         helper.make_node("Relu", ["a"], ["b"], name="relu_mid"),
         helper.make_node("Celu", ["b"], ["c"], name="celu_second"),
         helper.make_node("Det", ["c"], ["y"], name="det_last")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path_factory.mktemp("models") / "unsupported.onnx"
    onnx.save(model, path)
    return path


def _assert_lists_all_unsupported(msg: str) -> None:
    for word in ("Celu", "Det", "celu_first", "celu_second", "det_last"):
        assert word in msg, f"{word!r} missing from {msg!r}"
    assert "relu_mid" not in msg and "Relu" not in msg.replace("Celu", "")
    assert "2 operator" in msg


def test_unsupported_ops_build(unsupported_onnx, out_dir):
    out, before = out_dir
    _assert_lists_all_unsupported(assert_user_error(invoke("build", unsupported_onnx, "-o", out)))
    assert_nothing_written(out, before)


def test_unsupported_ops_inspect(unsupported_onnx):
    _assert_lists_all_unsupported(assert_user_error(invoke("inspect", unsupported_onnx)))


# ---- 3. split points that do not exist ----------------------------------------------------------
def test_unknown_split_point(out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", "pool9", "-o", out), "pool9")
    for near in ("pool1", "pool2", "pool3"):
        assert near in msg
    assert "tvmsplit inspect" in msg
    assert_nothing_written(out, before)


def test_unknown_split_point_among_good_ones(out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", "pool1,conv44", "-o", out),
                            "conv44")
    assert "conv4" in msg
    assert_nothing_written(out, before)


def test_split_at_a_fused_node_name_cuts_after_its_layer(out_dir, tmp_path):
    """zoo.py promises "a split point can be given as a node name". ``relu1`` is the Relu node
    fused into layer ``conv1``: splitting there cuts after conv1, exactly as ``--split-at conv1``
    does, and the bundle runs to onnxruntime's output."""
    out, _ = out_dir
    result = invoke("build", "zoo:chain", "--split-at", "relu1", "-o", out, "--check")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("OK"), result.stdout
    stages = [s.plan.layers for s in tvmsplit.Bundle.load(out).stages]
    assert stages[0] == ("conv1",) and stages[1][0] == "conv2"
    by_layer = invoke("build", "zoo:chain", "--split-at", "conv1", "-o", tmp_path / "by-layer")
    assert by_layer.exit_code == 0, by_layer.output
    assert [s.plan.layers for s in tvmsplit.Bundle.load(tmp_path / "by-layer").stages] == stages


# ---- 4. dynamic input dimensions and --shape ----------------------------------------------------
@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory) -> Path:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "height", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "h2", 4])], [w])
    path = tmp_path_factory.mktemp("models") / "dynamic.onnx"
    onnx.save(model, path)
    return path


def test_dynamic_dims_need_pinning(dynamic_onnx, out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", dynamic_onnx, "-o", out), "'x'", "N", "height", "--shape x=")
    assert "0 (N)" in msg and "2 (height)" in msg  # which dimensions
    assert_nothing_written(out, before)
    assert_user_error(invoke("inspect", dynamic_onnx), "'x'", "height", "--shape x=")


def test_shape_pins_dynamic_dims(dynamic_onnx, tmp_path):
    out = tmp_path / "out"
    result = invoke("build", dynamic_onnx, "--shape", "x=1,3,8,8", "-o", out)
    assert result.exit_code == 0, result.output
    bundle = tvmsplit.Bundle.load(out)
    assert bundle.inputs[0].shape == (1, 3, 8, 8)
    assert bundle.outputs[0].shape == (1, 4, 4, 4)
    assert_no_temp_dirs(out)


@pytest.mark.parametrize("value", ["x=a,b", "x1,3,8,8", "=1,3,8,8", "x=", "x=1,,8,8", "x=1.5,3,8,8"])
def test_malformed_shape(dynamic_onnx, out_dir, value):
    out, before = out_dir
    msg = assert_user_error(invoke("build", dynamic_onnx, "--shape", value, "-o", out), repr(value))
    assert "NAME=D1,D2" in msg and "--shape x=1,3,224,224" in msg
    assert_nothing_written(out, before)


@pytest.mark.parametrize("value, mentions", [
    ("x=1,3,8", ["'x'", "rank 4", "(1, 3, 8)"]),
    ("x=1,3,8,0", ["'x'", "(1, 3, 8, 0)"]),
    ("x=1,4,8,8", ["'x'", "(1, 4, 8, 8)", "[1]"]),
])
def test_shape_that_does_not_fit(dynamic_onnx, out_dir, value, mentions):
    out, before = out_dir
    assert_user_error(invoke("build", dynamic_onnx, "--shape", value, "-o", out), *mentions)
    assert_nothing_written(out, before)


def test_shape_for_unknown_input(dynamic_onnx, out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", dynamic_onnx, "--shape", "x=1,3,8,8", "--shape",
                                   "image=1,3,8,8", "-o", out), "image")
    assert "inputs are x" in msg
    assert_nothing_written(out, before)


# ---- 5. unknown targets -----------------------------------------------------------------------
@pytest.mark.parametrize("split_at, targets", [("", "nosuch"), ("pool1", "x86_64,nosuch")])
def test_unknown_target(out_dir, tmp_path, monkeypatch, split_at, targets):
    cache = tmp_path / "fresh-cache"
    monkeypatch.setenv("TVMSPLIT_CACHE", str(cache))
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", split_at, "--targets", targets,
                                   "-o", out), "'nosuch'")
    for name in KNOWN_TARGETS:
        assert name in msg
    assert_nothing_written(out, before)
    assert not (cache / "builds").exists(), "something was compiled before the target was checked"


# ---- 6. corrupt bundles (Python API; no CLI command loads a bundle) ------------------------------
@pytest.fixture
def bundle_copy(tmp_path, good_bundle) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(good_bundle, out)
    tvmsplit.Bundle.load(out)
    return out


def _libraries(bundle: Path) -> list[Path]:
    return sorted(bundle.glob("*.so"))


def test_bundle_flipped_bytes_fail_checksum(bundle_copy):
    lib = _libraries(bundle_copy)[1]
    data = bytearray(lib.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 8):
        data[k] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum") as exc:
        tvmsplit.Bundle.load(bundle_copy)
    assert lib.name in str(exc.value) and "rebuild" in str(exc.value)


@pytest.mark.parametrize("garbage", [b"{ this is not json", b"\x00\xff\xfe garbage \x80", b""])
def test_bundle_garbage_manifest(bundle_copy, garbage):
    (bundle_copy / "manifest.json").write_bytes(garbage)
    with pytest.raises(BundleError, match="manifest.json") as exc:
        tvmsplit.Bundle.load(bundle_copy)
    assert "rebuild" in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1


def test_bundle_missing_library(bundle_copy):
    lib = _libraries(bundle_copy)[2]
    lib.unlink()
    with pytest.raises(BundleError, match="missing") as exc:
        tvmsplit.Bundle.load(bundle_copy)
    assert lib.name in str(exc.value) and "rebuild" in str(exc.value)


def test_bundle_unknown_schema_version(bundle_copy):
    manifest = bundle_copy / "manifest.json"
    m = json.loads(manifest.read_text())
    m["schema_version"] = 99
    manifest.write_text(json.dumps(m))
    with pytest.raises(BundleError, match="99") as exc:
        tvmsplit.Bundle.load(bundle_copy)
    assert "schema" in str(exc.value) and "rebuild" in str(exc.value)


def test_bundle_missing_manifest(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a bundle"):
        tvmsplit.Bundle.load(bundle_copy)


@pytest.mark.parametrize("field", ["stages", "plan", "inputs"])
def test_bundle_manifest_missing_field(bundle_copy, field):
    manifest = bundle_copy / "manifest.json"
    m = json.loads(manifest.read_text())
    del m[field]
    manifest.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=field):
        tvmsplit.Bundle.load(bundle_copy)


def test_bundle_manifest_stage_target_without_fields(bundle_copy):
    """bundle.py: "Loading validates the schema, every field". A stage whose ``target`` lost its
    fields is refused by Bundle.load (naming the stage and what it needs), not loaded to fail
    with a KeyError later."""
    manifest = bundle_copy / "manifest.json"
    m = json.loads(manifest.read_text())
    m["stages"][0]["target"] = {}
    manifest.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"stage 0 has no valid target \(needs name, arch and "
                                          r"target\.kind\); rebuild the bundle"):
        tvmsplit.Bundle.load(bundle_copy)


def test_build_over_corrupt_bundle_replaces_it(bundle_copy, tmp_path):
    """The CLI has no command that loads a bundle; building over a corrupt bundle replaces it."""
    lib = _libraries(bundle_copy)[0]
    lib.write_bytes(b"corrupt")
    result = invoke("build", "zoo:chain", "--split-at", "pool1,pool2", "-o", bundle_copy)
    assert result.exit_code == 0, result.output
    tvmsplit.Bundle.load(bundle_copy)
    assert_no_temp_dirs(bundle_copy)


# ---- 7. split points: last layer, order, duplicates, target count --------------------------------
def test_split_after_last_layer(out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", "fc2", "-o", out), "'fc2'")
    assert_nothing_written(out, before)
    # The fix must name layers one CAN split after, not the last layer itself.
    suggestions = msg.split(";", 1)[1]
    assert "fc1" in suggestions
    assert "fc2" not in suggestions, f"the error suggests the invalid split point again: {msg!r}"


def test_duplicate_split_points(out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", "pool1,pool2,pool1", "-o", out),
                            "pool1")
    assert "repeat" in msg
    assert_nothing_written(out, before)


@pytest.mark.parametrize("split_at, targets, stages", [
    ("pool1", "x86_64,rpi4b,x86_64", 2),
    ("pool1,pool2", "x86_64,rpi4b", 3),
])
def test_wrong_number_of_targets(out_dir, split_at, targets, stages):
    out, before = out_dir
    n = len(targets.split(","))
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", split_at, "--targets", targets,
                                   "-o", out), f"{stages} stage(s)", f"got {n}")
    assert "one for all" in msg
    assert_nothing_written(out, before)


# ---- 8. -o is a directory that is not a bundle ------------------------------------------------
@pytest.fixture
def foreign_dir(tmp_path) -> tuple[Path, dict[str, str]]:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    (d / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (d / "sub" / "notes.txt").write_text("keep me\n")
    return d, snapshot(d)


def test_output_dir_not_a_bundle_is_refused(foreign_dir):
    d, before = foreign_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "-o", d), str(d), progress_before=True)
    assert "not a bundle" in msg
    assert snapshot(d) == before
    assert sorted(p.name for p in d.iterdir()) == ["holiday.jpg", "sub"]
    assert_no_temp_dirs(d)


def test_output_dir_refusal_is_the_only_stderr_line(foreign_dir):
    """The refusal is known before anything is built, so no 'building ...' line should precede it."""
    d, _ = foreign_dir
    assert_user_error(invoke("build", "zoo:chain", "-o", d), str(d))


def test_output_dir_is_current_empty_directory(tmp_path, monkeypatch):
    """`-o .` even in an empty directory is refused with one clean line that says what to give
    instead (a bundle is replaced atomically by renaming a directory, which cannot be done to
    the current one); nothing is written there, hidden directories included."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = invoke("build", "zoo:chain", "-o", ".")
    msg = assert_user_error(result, "'.'", "current directory", "give a new subdirectory")
    assert "-o build/model" in msg
    assert list(cwd.iterdir()) == []
    assert list(tmp_path.iterdir()) == [cwd]  # no sibling temporary directory either


# ---- 9. a build that fails mid-way leaves nothing ---------------------------------------------
def _fail_on_second_compile(monkeypatch, exc: BaseException) -> list[int]:
    calls: list[int] = []
    real = tcompile._compile_to

    def flaky(stage, spec, mod, out_path):
        calls.append(stage.index)
        if len(calls) == 2:
            raise exc
        return real(stage, spec, mod, out_path)

    monkeypatch.setattr(tcompile, "_compile_to", flaky)
    return calls


def test_build_failure_midway_python_api(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "fresh-cache"))  # so every stage compiles
    calls = _fail_on_second_compile(monkeypatch, RuntimeError("boom in the second stage"))
    g = tvmsplit.load(zoo.make("chain"), name="chain")
    plan = tvmsplit.plan_split(g, ["pool1", "pool2"], ["x86_64"])
    out = tmp_path / "nested" / "out"
    with pytest.raises(RuntimeError, match="boom in the second stage"):
        tvmsplit.build_bundle(g, plan, out)
    assert calls == [0, 1]
    assert not out.exists()
    assert_no_temp_dirs(out)
    assert [p.name for p in out.parent.iterdir()] == []


def test_build_failure_midway_cli_keeps_existing_bundle(out_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path / "fresh-cache"))
    _fail_on_second_compile(monkeypatch, BuildError("compiling stage 1 (conv3, conv4, pool2) for x86_64 "
                                                    "failed: simulated"))
    out, before = out_dir
    assert_user_error(invoke("build", "zoo:chain", "--split-at", "pool1,pool2", "-o", out),
                      "simulated", progress_before=True)
    assert_nothing_written(out, before)


# ---- end to end: the real console script -------------------------------------------------------
def test_console_script_exit_code(tmp_path):
    exe = shutil.which("tvmsplit")
    if exe is None:
        pytest.skip("the tvmsplit console script is not installed")
    out = tmp_path / "out"
    proc = subprocess.run([exe, "build", str(tmp_path / "missing.onnx"), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "missing.onnx" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# ---- issue 12, part 8: the small things ---------------------------------------------------------
def test_every_unknown_split_point_is_named_at_once(out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", "zoo:chain", "--split-at", "pool1,conv44,poool2",
                                   "-o", out), "'conv44'", "'poool2'", "tvmsplit inspect")
    assert "conv4" in msg and "pool2" in msg and "'pool1'" not in msg
    assert_nothing_written(out, before)


def test_split_points_out_of_order_are_refused_by_name(out_dir):
    out, before = out_dir
    assert_user_error(invoke("build", "zoo:chain", "--split-at", "conv5,pool1,relu2", "-o", out),
                      "out of order", "conv5 (layer 6)", "pool1 (layer 2)", "relu2 (layer 1)",
                      "--split-at relu2,pool1,conv5")
    assert_nothing_written(out, before)


def test_a_zero_dimension_is_named_not_the_rank(dynamic_onnx, out_dir):
    out, before = out_dir
    msg = assert_user_error(invoke("build", dynamic_onnx, "--shape", "x=1,3,0,8", "-o", out),
                            "'x'", "(1, 3, 0, 8)", "0 at dimension 2", ">= 1")
    assert "rank" not in msg
    assert_nothing_written(out, before)


def test_output_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert_user_error(invoke("build", "zoo:chain", "-o", blocker / "sub" / "out"),
                      repr(str(blocker)), "is a file")
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("args, mentions", [
    (["build", "zoo:chain", "--bogus"], ["--bogus", "tvmsplit build --help"]),
    (["bogus"], ["'bogus'", "tvmsplit --help"]),
    (["--bogus"], ["--bogus", "tvmsplit --help"]),
    (["build"], ["MODEL", "tvmsplit build --help"]),
    (["inspect", "zoo:chain", "extra"], ["extra", "tvmsplit inspect --help"]),
])
def test_click_usage_errors_are_one_error_line_and_exit_1(args, mentions):
    assert_user_error(invoke(*args), *mentions)
