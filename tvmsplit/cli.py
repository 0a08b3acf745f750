"""The ``tvmsplit`` command line. TVM is imported lazily, so ``--help`` is instant.

Every TvmsplitError becomes one line on stderr (``error: ...``) and exit code 1. SIGINT and
SIGTERM stop ``build``, ``run`` and ``demo`` cleanly (``_interruptible``): one line on stderr
(``interrupted (SIGINT): ...``) and exit code 130 / 143.
A MODEL argument is a path to an .onnx file or ``zoo:NAME`` for a built-in model.
"""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import click

from .devices import LINK_SPEC_HELP
from .errors import ShapeError, TvmsplitError


def _parse_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ShapeError(f"--shape {value!r} is not NAME=D1,D2,...; e.g. --shape x=1,3,224,224") from None
    return shapes


def _load_graph(model: str, shapes: tuple[str, ...], fallback: str | None = None):
    from . import zoo
    from .frontend import load

    pinned = _parse_shapes(shapes)
    if model.startswith("zoo:"):
        name = model[4:]
        start = time.perf_counter()
        proto = zoo.make(name)
        if time.perf_counter() - start > 1.0:
            _progress(f"{model}: random weights generated in {time.perf_counter() - start:.1f} s")
        return load(proto, shapes=pinned or None, name=name, log=_progress, copy=False,
                    fallback=fallback)
    return load(model, shapes=pinned or None, log=_progress, fallback=fallback)


def _split_list(value: str | None, option: str) -> list[str]:
    items = [v.strip() for v in (value or "").split(",")]
    if value and not all(items):
        raise TvmsplitError(f"{option} {value!r} has an empty entry; separate names with single commas")
    return [v for v in items if v]


def _progress(msg: str) -> None:
    click.echo(f"  {msg}", err=True)


split_at_option = click.option("--split-at", default="", metavar="L1,L2,...",
                               help="Cut after these layers (names from `tvmsplit inspect`).")
targets_option = click.option("--targets", default="x86_64", metavar="T1,T2,...", show_default=True,
                              help="One target per stage, or one for all (names from "
                                   "`tvmsplit targets`, or .toml files).")
shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=D1,D2,...",
                            help="Pin an input's shape (repeatable), e.g. x=1,3,224,224.")
db_option = click.option(
    "--db", default=None, type=click.Path(file_okay=False),
    help="Tuning database (`tvmsplit tune --db`); default: each target's own, when it was tuned.")
tolerance_option = click.option(
    "--tolerance", default=1e-4, show_default=True,
    help="--check's float32 tolerance: each element within T x the tensor's range (at least "
         "1e-6) + T x |reference|, like numpy.allclose; other float dtypes' scale with it, "
         "integers must be equal.")
plan_file_option = click.option(
    "--plan", "plan_file", type=click.Path(exists=True, dir_okay=False),
    help="A plan saved by `tvmsplit plan --save` (instead of --split-at/--targets).")
fallback_option = click.option(
    "--fallback", type=click.Choice(["onnxruntime"]), default=None,
    help="Accept ONNX operators TVM cannot import: the stages holding them run under "
         "onnxruntime in their worker (ONNX sub-models; the Python worker); default: refuse them.")


class UserError(click.ClickException):
    """A TvmsplitError shown as one line, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _usage_error(exc: click.UsageError) -> UserError:
    """A click usage error (unknown option, missing argument, ...) as one ``error:`` line, exit
    1, naming the command's help; ``tvmsplit`` alone still prints the usage."""
    where = exc.ctx.command_path if exc.ctx is not None else "tvmsplit"
    return UserError(f"{exc.format_message().rstrip('.')} (see `{where} --help`)")


class TvmsplitGroup(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from exc

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TvmsplitError as exc:
            raise UserError(str(exc)) from exc
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _usage_error(exc) from exc


_BUILT = "tvmsplit.bundle_written"  # click context meta: the command's bundle is in place


def _interruptible(command):
    """SIGINT and SIGTERM stop ``command`` the way Ctrl-C does (``interrupts.catching``: the
    handlers are installed here, while the command runs, never at import): temporary files and
    directories are removed by the clean-up the interrupt unwinds through, a previous bundle at
    the output is left as it was, workers are stopped; then one line and exit code 128 + the
    signal number (130 SIGINT, 143 SIGTERM)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import signal

        from . import interrupts

        with interrupts.catching((signal.SIGINT, signal.SIGTERM)):
            try:
                return command(*args, **kwargs)
            except BaseException as exc:
                signum = interrupts.received()
                if signum is None:  # not interrupted: errors stay errors
                    raise
                written = (getattr(exc, "written", None) is not None
                           or click.get_current_context().meta.get(_BUILT, False))
        out_dir, what = kwargs.get("out_dir"), f"{command.__name__} stopped"
        if out_dir and written:
            what += f" after the bundle {out_dir!r} was written; temporary files removed"
        else:
            what += ", temporary files removed" + (f", {out_dir!r} left as it was" if out_dir else "")
        click.echo(f"interrupted ({signal.Signals(signum).name}): {what}", err=True)
        raise SystemExit(128 + signum)
    return wrapper


@click.group(cls=TvmsplitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tvmsplit")
def cli() -> None:
    """Split DNNs into parts, compile each with Apache TVM for its device, and check them."""


@cli.command()
@click.argument("model")
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the layer graph as JSON.")
@fallback_option
def inspect(model: str, shapes: tuple[str, ...], as_json: bool, fallback: str | None) -> None:
    """List MODEL's layers with their features; '*' marks good cut points, 'ort' the layers
    that fall back to onnxruntime (--fallback)."""
    g = _load_graph(model, shapes, fallback)
    cuts = {c.index: c for c in g.cut_candidates}
    falling = _fallback_layers(g, fallback)
    if as_json:
        doc = _graph_json(g, cuts)
        if fallback:
            for layer in doc["layers"]:
                layer["runtime"] = "onnxruntime" if layer["name"] in falling else "tvm"
                layer["fallback_ops"] = list(falling.get(layer["name"], ()))
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{g.name}: {len(g.layers)} layers, {g.param_bytes / 1024:.1f} KB params, "
               f"input {', '.join(f'{t.name}{list(t.shape)}' for t in g.inputs)} "
               f"({g.input_bytes / 1024:.1f} KB)")
    if g.folding:
        from .frontend import Folding

        click.echo(Folding(g.folding).describe())
    header = f"{'#':>3} {'layer':<28} {'op':<22} {'output shape':<20} {'MFLOPs':>9} " \
             f"{'params KB':>10} {'out KB':>9} {'cut KB':>9}"
    click.echo(header)
    click.echo("-" * len(header))
    for i, layer in enumerate(g.layers):
        cut = cuts.get(i)
        mark = "*" if cut is not None and g.good_cut(cut) else " "
        shape = "x".join(str(d) for d in layer.outputs[0].shape) if layer.outputs else "-"
        op = "+".join(dict.fromkeys(layer.ops))
        cut_kb = f"{cut.nbytes / 1024:.1f}" + (f"/{len(cut.tensors)}t" if len(cut.tensors) > 1 else "") \
            if cut is not None else "-"
        click.echo(f"{i:>3} {layer.name[:28]:<28} {op[:22]:<22} {shape[:20]:<20} "
                   f"{layer.flops / 1e6:>9.2f} {layer.param_bytes / 1024:>10.1f} "
                   f"{layer.output_bytes / 1024:>9.1f} {cut_kb:>9}{mark}"
                   + (" ort" if layer.name in falling else ""))
    click.echo("cut KB: bytes crossing a cut after the layer (/Nt: N tensors); "
               "* = fewer bytes than the cut before and than the input")
    if falling:
        click.echo(f"ort = runs under onnxruntime (--fallback): {len(falling)} layer(s) hold ops "
                   f"TVM cannot import: " + "; ".join(f"{name} ({', '.join(ops)})"
                                                     for name, ops in list(falling.items())[:8])
                   + ("; ..." if len(falling) > 8 else "") + "; cut before and after them to "
                   "keep the rest on TVM")


def _fallback_layers(g, fallback: str | None) -> dict:
    """Layer -> ops TVM cannot import (``fallback.fallback_layers``); {} without --fallback."""
    if not fallback:
        return {}
    from .fallback import fallback_layers

    return fallback_layers(g)


def _graph_json(g, cuts) -> dict:
    return {
        "model": g.name, "model_sha256": g.model_sha256, "folding": g.folding,
        "inputs": [t.to_json() for t in g.inputs], "outputs": [t.to_json() for t in g.outputs],
        "layers": [{
            "index": i, "name": layer.name, "op": layer.op, "ops": list(layer.ops),
            "nodes": list(layer.nodes), "inputs": [t.to_json() for t in layer.inputs],
            "outputs": [t.to_json() for t in layer.outputs], "macs": layer.macs,
            "flops": layer.flops, "param_bytes": layer.param_bytes,
            "output_bytes": layer.output_bytes,
            "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in layer.attrs},
            "cut_after": None if i not in cuts else {
                "tensors": [t.to_json() for t in cuts[i].tensors], "bytes": cuts[i].nbytes,
                "good": g.good_cut(cuts[i])},
        } for i, layer in enumerate(g.layers)],
    }


@cli.command()
@click.argument("model")
@split_at_option
@targets_option
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (replaced if it holds a bundle).")
@shape_option
@plan_file_option
@click.option("--check", is_flag=True, help="Run host-runnable stages and compare with onnxruntime.")
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="--check's input: .npy (single-input models) or .npz (by input name); "
                   "default: what the model expects (images in [0,1), token ids in range).")
@tolerance_option
@db_option
@fallback_option
@_interruptible
def build(model: str, split_at: str, targets: str, out_dir: str, shapes: tuple[str, ...],
          plan_file: str | None, check: bool, input_file: str | None, tolerance: float,
          db: str | None, fallback: str | None) -> None:
    """Split MODEL, compile every stage for its target and write a bundle."""
    if input_file and not check:
        raise TvmsplitError(f"--input {input_file} is what --check feeds the stages; add --check")
    g = _load_graph(model, shapes, fallback)
    inputs = _read_inputs(input_file, g) if input_file else None
    g, plan = _plan_to_build(g, split_at, targets, plan_file)
    _build_plan_and_check(g, plan, out_dir, check, tolerance, db, fallback, inputs)


def _parse_duration(text: str | None) -> float | None:
    """'20m', '90s', '1.5h' or plain seconds -> seconds."""
    if text is None:
        return None
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise TvmsplitError(f"--time-budget {text!r} is not a positive duration; e.g. 20m, 90s, 1h")
    return seconds


def _parse_hostport(text: str | None, option: str) -> tuple[str, int] | None:
    from .rpc_device import parse_address

    return None if text is None else parse_address(text, option)


@cli.command()
@click.argument("model")
@click.option("--target", "target_name", required=True,
              help="Target to tune for (`tvmsplit targets`; `host` is this machine's CPU).")
@db_option
@click.option("--trials", default=200, show_default=True, type=click.IntRange(min=1),
              help="Measured schedules in total for this database (resumes: trials already "
                   "recorded for the model's kernels count).")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Stop after this long (e.g. 20m); what was measured is kept.")
@click.option("--rpc", default=None, metavar="HOST:PORT",
              help="Measure on a device's RPC server (`python -m tvmsplit.rpc_device`).")
@click.option("--tracker", default=None, metavar="HOST:PORT", help="Measure through an RPC tracker.")
@click.option("--key", default=None, help="The device's key at the tracker.")
@click.option("--num-cores", type=click.IntRange(min=1), default=None,
              help="The device's physical cores, if its target file does not say.")
@split_at_option
@shape_option
@plan_file_option
@click.option("--retime", is_flag=True,
              help="Do not search: re-time the best records of MODEL's kernels as medians of "
                   "--repeat runs (on a quiet machine; MetaSchedule measured each candidate "
                   "once, as noisy as the machine was).")
@click.option("--repeat", default=7, show_default=True, type=click.IntRange(min=3),
              help="--retime's runs per record.")
def tune(model, target_name, db, trials, time_budget, rpc, tracker, key, num_cores, split_at,
         shapes, plan_file, retime, repeat):
    """Tune MODEL's kernels for a target with MetaSchedule into a tuning database that every
    later build, run and profile for that target uses."""
    import sys

    from .targets import get_target
    from .tune import tune as run_tune

    if rpc and tracker:
        raise TvmsplitError("give --rpc HOST:PORT or --tracker HOST:PORT --key KEY, not both")
    if retime and (rpc or tracker):
        raise TvmsplitError("--retime measures on this machine; drop --rpc/--tracker")
    spec = get_target(target_name)
    budget_s = _parse_duration(time_budget)
    rpc_addr, tracker_addr = _parse_hostport(rpc, "--rpc"), _parse_hostport(tracker, "--tracker")
    g = _load_graph(model, shapes)
    plans = []
    if split_at or plan_file:
        # the saved plan as it is (never re-planned), or --split-at's stages, all on this target
        g, saved = _plan_to_build(g, split_at, spec.name, plan_file)
        plans.append(saved)
    if retime:
        from .retime import retime as run_retime

        result = run_retime(g, spec, db=db, plans=plans, repeat=repeat, num_cores=num_cores,
                            log=_progress)
        click.echo(f"re-timed {g.name} for {spec.name}: {result.describe()}")
        return
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(p) -> None:
        if tty:
            click.echo("\r" + p.line(), nl=False, err=True)
        elif p.trials_done >= last[0] + max(1, p.trials_total // 20) or p.trials_done >= p.trials_total:
            last[0] = p.trials_done
            click.echo("  " + p.line(), err=True)

    try:
        result = run_tune(g, spec, db=db, trials=trials, time_budget_s=budget_s, plans=plans,
                          rpc=rpc_addr, tracker=tracker_addr, key=key, num_cores=num_cores,
                          progress=show, log=_progress)
    except KeyboardInterrupt:
        if tty:
            click.echo("", err=True)
        click.echo("interrupted: every trial measured so far is in the database; run the same "
                   "command again to continue", err=True)
        raise SystemExit(130)
    if tty:
        click.echo("", err=True)
    click.echo(f"tuned {g.name} for {spec.name}: {result.describe()}")


def _plan_to_build(g, split_at: str, targets: str, plan_file: str | None):
    """``(graph, Plan)``: the plan of --split-at/--targets (``split.plan_split``), or the plan
    saved by `tvmsplit plan --save` exactly as saved, after checking that MODEL is the model it
    was made for; its graph is MODEL rewritten by the saved horizontal splits. Never plans."""
    from .split import plan_split, saved_graph
    from .targets import get_target

    if not plan_file:
        cuts, targets_list = _split_list(split_at, "--split-at"), _split_list(targets, "--targets")
        for t in targets_list:
            get_target(t)  # unknown targets fail before anything is built
        return g, plan_split(g, cuts, targets_list or ["x86_64"])
    if split_at:
        raise TvmsplitError("give either --plan or --split-at, not both")
    from .plan import read_plan_file

    saved = read_plan_file(plan_file)
    g = saved_graph(g, saved, f"--plan {plan_file}")
    for s in saved.plan.stages:
        get_target(s.target)
    return g, saved.plan


def _build_and_check(g, split_at: list[str], targets: list[str], stage_of: dict | None,
                     routing: str, out_dir: str, check: bool, tolerance: float,
                     db: str | None = None) -> None:
    """Split ``g`` (``split.plan_split``'s arguments) and build the plan (``demo``)."""
    from .split import plan_split
    from .targets import get_target

    for t in targets:
        get_target(t)  # unknown targets fail before anything is built
    plan = plan_split(g, split_at, targets or ["x86_64"], stage_of=stage_of, routing=routing)
    _build_plan_and_check(g, plan, out_dir, check, tolerance, db)


def _build_plan_and_check(g, plan, out_dir: str, check: bool, tolerance: float,
                          db: str | None = None, fallback: str | None = None,
                          inputs: dict | None = None) -> None:
    """Build ``plan`` as it is into ``out_dir``, print its stages, and with ``check`` compare
    the host-runnable stages with onnxruntime."""
    from .build import build_bundle
    from .bundle import check_output_dir
    from .targets import get_target

    check_output_dir(out_dir)
    if db is not None:
        from .tunedb import database_paths

        database_paths([get_target(s.target) for s in plan.stages], db)  # refuse before building
    click.echo(f"building {len(plan.stages)} stage(s) of {g.name} into {out_dir}", err=True)
    start = time.perf_counter()
    bundle = build_bundle(g, plan, out_dir, progress=_progress, db=db, fallback=fallback)
    click.get_current_context().meta[_BUILT] = True  # an interrupt from now on comes after it
    click.echo(f"built in {time.perf_counter() - start:.1f} s", err=True)
    for stage in bundle.stages:
        cut = ", ".join(f"{t.name}{list(t.shape)}" for t in stage.plan.outputs)
        ort = " (onnxruntime)" if stage.runtime != "tvm" else ""
        click.echo(f"stage {stage.index} [{stage.target['name']}]{ort} {len(stage.plan.layers)} layers "
                   f"{stage.plan.layers[0]}..{stage.plan.layers[-1]}  params "
                   f"{stage.plan.param_bytes / 1024:.1f} KB  library {stage.library_bytes / 1024:.1f} KB"
                   f"  -> {cut}")
    if check:
        _report_check(bundle, g, tolerance, inputs)


def _report_check(bundle, g, tolerance: float, inputs: dict | None = None) -> None:
    """Per stage, and per tensor it outputs: how far from the reference and where; then the
    verdict line (``check vs REF: max abs err A, max rel err R (...) OK|FAILED``, R relative to
    each tensor's largest magnitude); exit 1 when a tensor is beyond its tolerance."""
    from .check import check_bundle, reference_name

    report = check_bundle(bundle, g, inputs, tolerance=tolerance)
    for s in report.stages:
        if not s.ran:
            click.echo(f"check stage {s.index} [{s.target}]: not runnable on this machine, skipped")
            continue
        fed = "chained" if s.chained else f"fed {reference_name(g)}'s inputs"
        worst = max(s.errors, key=lambda e: e.ratio)
        click.echo(f"check stage {s.index} [{s.target}] ({fed}): max abs err "
                   f"{max(e.max_abs for e in s.errors):.3g}, max rel err {s.rel:.3g}, worst "
                   f"tensor at {worst.ratio:.2g} of tolerance{'' if s.ok else ' FAILED'}")
        _echo_tensors(s.errors)
    _echo_verdict(g, report.max_abs, report.rel, report.worst, tolerance, report.ok)
    if not report.ok:
        raise SystemExit(1)


def _echo_tensors(errors) -> None:
    """One line per tensor (all of them when few, else the 3 worst and the failing ones)."""
    ranked = sorted(errors, key=lambda e: -e.ratio)
    shown = ranked if len(ranked) <= 4 else [e for i, e in enumerate(ranked) if i < 3 or not e.ok]
    for e in shown:
        click.echo(f"  {e.describe()}")
    if len(shown) < len(ranked):
        click.echo(f"  ... {len(ranked) - len(shown)} more tensor(s) within tolerance")


def _echo_verdict(g, max_abs: float, rel: float, worst, tolerance: float, ok: bool) -> None:
    from .check import reference_name

    how = (f"worst {worst.name}: {worst.ratio:.2g} of its tolerance, "
           f"{worst.tolerance.describe()}" if worst is not None else f"tolerance {tolerance:g}")
    click.echo(f"check vs {reference_name(g)}: max abs err {max_abs:.3g}, max rel err {rel:.3g} "
               f"(rel: to each tensor's largest |value|; {how}) {'OK' if ok else 'FAILED'}")


def _run_pipeline(bundle, g, requests: int, inputs, check: bool, tolerance: float,
                  endpoints=None, secure=None, worker_kind: str | None = None) -> None:
    from .check import compare, default_inputs, reference
    from .runtime.launch import LocalLauncher, worker_program
    from .runtime.pipeline import Pipeline

    inputs = inputs if inputs is not None else default_inputs(g)
    click.echo(f"starting {len(bundle.stages)} worker(s)" +
               (" (local processes)" if endpoints is None else "") +
               (", CurveZMQ" if secure else ""), err=True)
    launcher = (LocalLauncher(program=worker_program(worker_kind))
                if endpoints is None and worker_kind else None)
    with Pipeline(bundle, endpoints=endpoints, secure=secure, launcher=launcher) as pipeline:
        pipeline.run(inputs)  # warm-up: first-call setup in every worker
        outputs, trace = pipeline.run(inputs)
        _print_trace(trace, [s.target["name"] for s in bundle.stages])
        if requests > 1:
            start = time.perf_counter()
            results = list(pipeline.stream(inputs for _ in range(requests)))
            elapsed = time.perf_counter() - start
            bound = 1000.0 / max(trace.compute_ms)
            click.echo(f"{len(results)} streamed requests in {elapsed:.2f} s: "
                       f"{len(results) / elapsed:.1f} req/s (bound 1/max stage compute: {bound:.1f} req/s)")
        health = [h for h in pipeline.health() if h.get("ok") and h.get("peak_rss_bytes")]
        if health:  # the measured check of a memory plan where no cgroup enforces it
            click.echo("worker memory, peak RSS: " + ", ".join(
                f"stage {h['stage']} {h['peak_rss_bytes'] / 1e6:.0f} MB" for h in health))
    if check:
        ref = reference(g, inputs)
        errors = [compare(outputs[t.name], ref[t.name], t.name, tolerance) for t in g.outputs]
        ok = all(e.ok for e in errors)
        _echo_tensors(errors)
        _echo_verdict(g, max(e.max_abs for e in errors), max(e.rel for e in errors),
                      max(errors, key=lambda e: e.ratio), tolerance, ok)
        if not ok:
            raise SystemExit(1)


def _print_trace(trace, targets: list[str]) -> None:
    """Each stage after the hops into it, then the hops back to the client (a chain reads top
    to bottom; in a stage DAG, hops into one stage came along parallel branches)."""
    def who(index: int) -> str:
        return "client" if index < 0 else f"stage {index}"

    def hop_line(h) -> None:
        click.echo(f"{'hop ' + who(h.src) + ' -> ' + who(h.dst):<24} {'':>10} {h.nbytes:>10} "
                   f"{h.ms:>11.3f}")

    click.echo(f"{'':<24} {'compute ms':>10} {'bytes':>10} {'transfer ms':>11}")
    for stage, ms in enumerate(trace.compute_ms):
        for h in trace.hops:
            if h.dst == stage:
                hop_line(h)
        load = trace.load_ms[stage] if stage < len(trace.load_ms) else 0.0
        click.echo(f"{'stage ' + str(stage) + ' [' + targets[stage] + ']':<24} {ms:>10.3f}"
                   + (f"   (sequential: {load:.1f} ms loading segments)" if load else ""))
    for h in trace.hops:
        if h.dst < 0:
            hop_line(h)
    click.echo(f"{'total':<24} {sum(trace.compute_ms):>10.3f} {sum(trace.hop_bytes):>10} "
               f"{trace.transfer_ms:>11.3f}   end to end {trace.total_ms:.3f} ms")


@cli.command()
@click.argument("model")
@split_at_option
@targets_option
@click.option("-o", "--output", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Bundle directory (default: a temporary one).")
@shape_option
@plan_file_option
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="Input tensor as .npy (single-input models) or .npz (by input name).")
@click.option("--workers", default=None, metavar="FILE",
              help="JSON list of running workers' endpoints ({data, control, out}) instead of local ones.")
@click.option("--requests", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--check", is_flag=True, help="Compare the output with onnxruntime.")
@tolerance_option
@click.option("--secure", default=None, type=click.Path(file_okay=False), metavar="KEYS_DIR",
              help="Run every link over CurveZMQ with the keys in KEYS_DIR (`tvmsplit keys`); "
                   "off by default, plain TCP is fine on loopback.")
@click.option("--worker", "worker_kind", type=click.Choice(["python", "native"]), default=None,
              help="Local worker kind for every stage: the Python worker, or the native C++ "
                   "tvmsplit-worker (build it with CMakeLists.txt); default: what each stage's "
                   "target file asks for ([worker] kind), else python.")
@db_option
@fallback_option
@_interruptible
def run(model, split_at, targets, out_dir, shapes, plan_file, input_file, workers, requests, check,
        tolerance, secure, worker_kind, db, fallback):
    """Build MODEL's stages, run them as a pipeline of workers, print the trace."""
    import tempfile

    from .bundle import Bundle

    g = _load_graph(model, shapes, fallback)
    inputs = _read_inputs(input_file, g) if input_file else None
    endpoints = json.loads(Path(workers).read_text()) if workers else None
    with tempfile.TemporaryDirectory(prefix="tvmsplit-run-") as tmp:
        out = out_dir or str(Path(tmp) / "bundle")
        g, plan = _plan_to_build(g, split_at, targets, plan_file)
        _build_plan_and_check(g, plan, out, False, tolerance, db, fallback)
        _run_pipeline(Bundle.load(out), g, requests, inputs, check, tolerance, endpoints, secure,
                      worker_kind)


def _read_inputs(path: str, g) -> dict:
    import numpy as np

    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        if len(g.inputs) != 1:
            raise ShapeError(f"{path}: the model has {len(g.inputs)} inputs; give an .npz with "
                             f"arrays named {', '.join(t.name for t in g.inputs)}")
        return {g.inputs[0].name: data}
    return {name: data[name] for name in data.files}


@cli.command()
@click.option("-o", "--output", "out_dir", default="build/demo", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--requests", default=20, show_default=True, type=click.IntRange(min=1))
@_interruptible
def demo(out_dir: str, requests: int) -> None:
    """The main job on a built-in ResNet-style model: split it 3 ways (one cut inside a skip
    connection), build each stage with TVM, run the stages as local worker processes over ZeroMQ,
    print the per-stage/per-hop trace and check the output against onnxruntime."""
    from . import zoo
    from .frontend import load

    g = load(zoo.make("resnet"), name="resnet")
    inside = next(c for c in g.cut_candidates if len(c.tensors) > 1)  # a cut inside a skip connection
    good = [c for c in g.cut_candidates if g.good_cut(c) and c.index > inside.index]
    second = good[0] if good else g.cut_candidates[-1]
    split_at = [inside.after, second.after]
    click.echo(f"model: zoo resnet, {len(g.layers)} layers; cutting after {', '.join(split_at)} "
               f"({len(inside.tensors)} tensors cross the cut after {inside.after})")
    _build_and_check(g, split_at, ["x86_64"], None, "chain", out_dir, False, 1e-4)
    from .bundle import Bundle

    _run_pipeline(Bundle.load(out_dir), g, requests, None, True, 1e-4)


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args) -> None:
    """Serve one stage of a bundle as a pipeline worker (runtime-only TVM); the options are
    those of `python -m tvmsplit.runtime.worker` (see `tvmsplit worker --help`)."""
    from .runtime.worker import main as worker_main

    code = worker_main(list(args), prog="tvmsplit worker")
    if code:
        raise SystemExit(code)


@cli.command()
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
@click.option("--input-size", type=int, default=None, help="Input height/width.")
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel multiplier.")
def zoo(name: str | None, output: str | None, input_size: int | None, width: float) -> None:
    """Write built-in model NAME to an ONNX file (no NAME: list the models)."""
    from . import zoo as zoo_models

    if name is None:
        click.echo("\n".join(zoo_models.names()))
        return
    if output is None:
        raise TvmsplitError("give the output file with -o, e.g. -o model.onnx")
    path = zoo_models.save(name, output, input_size=input_size, width=width)
    click.echo(f"wrote {path} ({Path(path).stat().st_size / 1e6:.1f} MB)")


def _parse_pairs(values: str | tuple[str, ...], option: str) -> list[tuple[str, str]]:
    items = values if isinstance(values, tuple) else tuple(_split_list(values, option))
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise TvmsplitError(f"{option} {item!r} is not NAME=VALUE")
        pairs.append((key.strip(), value.strip()))
    return pairs


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> int:
    import re

    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise TvmsplitError(f"size {text!r} is not a number with an optional unit "
                            "(B, KB, MB, GB, KiB, MiB, GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@cli.command(name="plan")
@click.argument("model", required=False)
@click.option("--profile", "profile_file", type=click.Path(exists=True, dir_okay=False),
              metavar="FILE",
              help="Plan from a block-chain profile instead of a MODEL: per-block compute times "
                   "per device (ms) and output sizes (bytes), CSV or JSON (README, 'Planning "
                   "from a profile'); no ONNX, no --costs.")
@click.option("--devices", required=True, metavar="NAME=TARGET,...",
              help="The device path, end first: e.g. end=rpi4b,edge=x86_64 (target names or "
                   ".toml files; with --profile the names are the profile's devices).")
@click.option("--link", "links", default="4g", show_default=True, metavar="LINK,...",
              help="One link per hop, comma-separated; " + LINK_SPEC_HELP + ".")
@click.option("--costs", "costs_file", metavar="FILE|measure|predict",
              help="Per-layer compute times: a JSON or CSV file (see README); 'measure': time "
                   "every layer on the testbed's devices (end=pi-class,edge=host; root); "
                   "'predict': each device's trained predictor (`tvmsplit train`). Default: the "
                   "predictors when every device has one, else measure when the devices are "
                   "the testbed's.")
@click.option("--objective", type=click.Choice(["latency", "throughput", "energy"]),
              default="latency", show_default=True)
@click.option("--power", "powers", default="", metavar="NAME=BUSY/IDLE/TX,...",
              help="Watts per device for --objective energy, e.g. end=5/0.5/2 (others: 0).")
@click.option("--method", default="auto", show_default=True, help="Planner name (see README).")
@click.option("--mem-cap", "mem_caps", default="", metavar="NAME=SIZE,...",
              help="Memory cap per device, e.g. end=1GiB (weights + peak activations).")
@click.option("--sequential", type=click.Choice(["auto", "best", "always", "off"]), default="auto",
              show_default=True,
              help="HyPS sequential devices (one segment of layers in memory at a time, so a "
                   "model larger than the --mem-cap still runs): auto = only where a cap "
                   "requires it, best = wherever it plans faster, always = every capped device.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Requests a sequential device serves per load of its segments.")
@click.option("--horizontal", type=click.Choice(["fewest", "best", "off"]), default="fewest",
              show_default=True,
              help="HyPS H-parts for a layer that fits no cap: the fewest that fit, the count "
                   "that plans best (more parts balance devices, cost transfers), or refuse.")
@click.option("--pin", "pins", multiple=True, metavar="LAYER=DEVICE", help="Keep a layer on a device.")
@click.option("--input-bytes", type=int, default=None,
              help="Size of the input as the end device sends it (e.g. a JPEG); default: raw "
                   "tensor (with --profile: the profile's input_bytes). Decoding it is not "
                   "priced (0 ms) unless --decode-ms is given; `tvmsplit evaluate "
                   "--input-bytes N` measures it.")
@click.option("--decode-ms", "decode_ms", default="", metavar="NAME=MS,...",
              help="With --input-bytes: ms to decode the input on each device, charged to the "
                   "device that runs the layer reading it (others: 0).")
@click.option("--send-ms", "send_ms", default="", metavar="NAME=MS[/MS_PER_KB],...",
              help="Throughput: how long a device's stage is busy per request sending up its "
                   "link (plus per KB sent, after a slash), in the bottleneck; `tvmsplit "
                   "evaluate --objective throughput` measures it on the testbed (others: 0).")
@click.option("--end-devices", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N",
              help="N end devices like the first of --devices, each running this model, share "
                   "the edge (the second device) and the uplink into it (--link): every "
                   "device's split and its shares of the edge's compute and of the link's "
                   "bandwidth are planned together, minimising the worst latency. Two devices, "
                   "latency objective.")
@click.option("--deadline-ms", type=float, default=None,
              help="With --end-devices: an end device whose model alone meets this deadline "
                   "leaves the edge to the others.")
@click.option("--share-steps", type=click.IntRange(min=1, max=100), default=20,
              show_default=True, help="With --end-devices: shares are multiples of 1/STEPS.")
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--save", type=click.Path(dir_okay=False), help="Write the plan JSON here (for build --plan).")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Draw per-layer compute and cut sizes with the cuts marked (PNG).")
@click.option("--links-file", type=click.Path(exists=True, dir_okay=False),
              help="A device graph instead of a path (JSON/TOML: links between pairs of the "
                   "--devices, see tvmsplit/partition/topology.py); the planner chooses which devices "
                   "and in what order, the input at the first of --devices. --link is unused.")
@click.option("--sink", default="end", show_default=True, metavar="end|last|DEVICE",
              help="Where the outputs go: back to the first device, consumed where the last "
                   "stage runs, or at a named device.")
@click.option("--deploy-cost", is_flag=True,
              help="One-shot run: add the time to ship each stage's library (weights + code) "
                   "to its device to the latency objective (always reported).")
@fallback_option
def plan_cmd(model, profile_file, devices, links, costs_file, objective, powers, method, mem_caps,
             sequential, batch, horizontal, pins, input_bytes, decode_ms, send_ms, end_devices,
             deadline_ms, share_steps, shapes, as_json, save, plot, links_file, sink, deploy_cost,
             fallback) -> None:
    """Choose where to split MODEL (or a --profile) across a path of devices, with the
    baselines side by side."""
    from .devices import Device, Link
    from .partition import PowerModel
    from .planning import plan_partition

    profile = _plan_source(model, profile_file, costs_file, shapes)
    if profile and fallback:
        raise TvmsplitError("--fallback is for a MODEL; a --profile has no operators: drop it")
    g = profile.graph() if profile else _load_graph(model, shapes, fallback)
    caps = {name: parse_bytes(size) for name, size in _parse_pairs(mem_caps, "--mem-cap")}
    devs = [Device(name, target, caps.pop(name, None))
            for name, target in _parse_pairs(devices, "--devices")]
    if caps:
        raise TvmsplitError(f"--mem-cap for unknown device(s) {', '.join(caps)}")
    link_list = [Link.profile(p) for p in _split_list(links, "--link")]
    if len(devs) == 1 and _is_default("links"):
        link_list = []  # one device has no hop: the default --link does not apply
    power = {}
    for name, watts in _parse_pairs(powers, "--power"):
        try:
            power[name] = PowerModel(*(float(w) for w in watts.split("/")))
        except (TypeError, ValueError):
            raise TvmsplitError(f"--power {name}={watts} is not BUSY/IDLE/TX watts, e.g. 5/0.5/2") from None
    if end_devices > 1 or deadline_ms is not None:
        _check_shared_options(end_devices, devs, objective, pins, mem_caps, powers, save, plot,
                              method)
    costs = profile.costs([d.name for d in devs]) if profile else _plan_costs(g, devs, costs_file)
    from .partition.topology import Topology

    result = plan_partition(g, devs, link_list, costs,
                            objective=objective, method=method, pins=dict(_parse_pairs(pins, "--pin")),
                            input_bytes=input_bytes, power=power, sequential=sequential,
                            batch=batch, horizontal=horizontal,
                            topology=Topology.from_file(links_file) if links_file else None,
                            sink=sink, deploy_in_objective=deploy_cost,
                            decode_ms=_decode_ms(decode_ms, input_bytes),
                            **_send_ms(send_ms))
    if end_devices > 1:
        _plan_shared(result, link_list, input_bytes, end_devices, deadline_ms, share_steps, as_json)
        return
    if save:
        from .plan import save_plan_file

        save_plan_file(save, result.to_json())
    if plot:
        from .plot import plot_plan

        click.echo(f"plot: {plot_plan(result, plot)}", err=True)
    runtimes = _stage_runtimes(result.graph, result.plan, fallback)
    if as_json:
        doc = result.to_json()
        if fallback:
            doc["stage_runtimes"] = list(runtimes)
        click.echo(json.dumps(doc, indent=2))
        return
    _print_plan(result.graph, result, result.links if links_file else link_list, objective)
    if input_bytes is not None:
        click.echo(f"input sent as {input_bytes} bytes; its decode is "
                   + (f"priced ({decode_ms} ms) where the first layer runs" if decode_ms else
                      "not priced (0 ms): give --decode-ms, or measure it with `tvmsplit "
                      "evaluate MODEL --input-bytes N`"))
    if any(r != "tvm" for r in runtimes):
        from .fallback import describe

        click.echo(f"{describe(runtimes)}: predicted times of those stages are the predictor's "
                   "or the cost table's, not onnxruntime's; build them with --fallback onnxruntime")


def _decode_ms(text: str, input_bytes: int | None) -> dict[str, float]:
    """``--decode-ms NAME=MS,...`` as device name -> ms (needs --input-bytes)."""
    if text and input_bytes is None:
        raise TvmsplitError("--decode-ms prices decoding an encoded input: give --input-bytes "
                            "(its size as sent) too")
    try:
        return {name: float(ms) for name, ms in _parse_pairs(text, "--decode-ms")}
    except ValueError:
        raise TvmsplitError(f"--decode-ms {text!r} is not NAME=MS,... (e.g. end=4.2,edge=0.6)") from None


def _send_ms(text: str) -> dict[str, dict[str, float]]:
    """``--send-ms NAME=MS[/MS_PER_KB],...`` as plan_partition's ``send_ms`` and
    ``send_ms_per_byte`` (device name -> ms, ms per byte)."""
    fixed, per_byte = {}, {}
    for name, value in _parse_pairs(text, "--send-ms"):
        try:
            parts = [float(v) for v in value.split("/")]
            if len(parts) > 2 or min(parts) < 0:
                raise ValueError
        except ValueError:
            raise TvmsplitError(f"--send-ms {name}={value} is not MS or MS/MS_PER_KB (>= 0), "
                                "e.g. end=20 or end=18/0.3") from None
        fixed[name] = parts[0]
        per_byte[name] = parts[1] / 1e3 if len(parts) == 2 else 0.0
    return {"send_ms": fixed, "send_ms_per_byte": per_byte}


def _stage_runtimes(g, plan, fallback: str | None) -> tuple:
    """Each stage's runtime under --fallback (``fallback.stage_runtimes``); all TVM without."""
    if not fallback:
        return ("tvm",) * len(plan.stages)
    from .fallback import stage_runtimes

    return stage_runtimes(g, plan, fallback)


def _is_default(param: str) -> bool:
    """True when the current command's ``param`` was not given (its default is in use)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(param) == ParameterSource.DEFAULT


def _plan_costs(g, devs, choice: str | None):
    """The cost table ``plan --costs`` asks for (see its help)."""
    from .evaluate import measurable_here, measured_costs
    from .partition import CostTable
    from .predict import cost_table, predict_model
    from .predict.errors import PredictorMissingError

    if choice not in (None, "measure", "predict"):
        if not Path(choice).is_file():
            raise TvmsplitError(f"--costs {choice!r} is not a file, 'measure' or 'predict'")
        return CostTable.from_file(choice)
    why_not = measurable_here(devs)
    if choice == "measure" or (choice is None and why_not is None and not _all_trained(devs)):
        if why_not is not None:
            raise TvmsplitError(f"--costs measure: {why_not}")
        return measured_costs(g, devs, log=_progress)
    try:  # each device's trained predictor, under this machine's live load
        return cost_table(g, {d.name: predict_model(g, d.target) for d in devs})
    except PredictorMissingError as exc:
        raise TvmsplitError(f"{exc}; or plan on the testbed's devices, whose layers are measured "
                            f"(root): `tvmsplit plan MODEL --devices end=pi-class,edge=host`") from None


def _plan_source(model, profile_file, costs_file, shapes):
    """``plan``'s input: None for a MODEL, the block profile for ``--profile``."""
    if (model is None) == (profile_file is None):
        raise TvmsplitError("plan takes a MODEL (an .onnx file or zoo:NAME) or --profile FILE"
                            + (", not both" if model else ""))
    if profile_file is None:
        return None
    from .blockprofile import read_block_profile

    clash = [opt for opt, value in (("--costs", costs_file), ("--shape", shapes)) if value]
    if clash:
        raise TvmsplitError(f"--profile holds the compute times and sizes; drop {', '.join(clash)}")
    return read_block_profile(profile_file)


def _check_shared_options(n, devs, objective, pins, mem_caps, powers, save, plot, method) -> None:
    problems = []
    if n < 2:
        problems.append("--deadline-ms is for --end-devices N with N >= 2")
    if len(devs) != 2:
        problems.append(f"--end-devices shares one edge: give two --devices, END,EDGE (got {len(devs)})")
    if objective != "latency":
        problems.append("--end-devices minimises the worst latency: drop --objective")
    given = [opt for opt, v in (("--pin", pins), ("--mem-cap", mem_caps), ("--power", powers),
                                ("--save", save), ("--plot", plot),
                                ("--method", method != "auto")) if v]
    if given:
        problems.append(f"{', '.join(given)} do not combine with --end-devices")
    if problems:
        raise TvmsplitError("; ".join(problems))


def _plan_shared(result, links, input_bytes, n, deadline_ms, steps, as_json) -> None:
    """``plan --end-devices N``: N copies of the end device share the edge (partition/multi.py)."""
    from .partition import Problem
    from .partition.multi import EndDevice, plan_shared_edge

    end, edge = result.devices
    problem = Problem(result.graph, result.plan_costs, tuple(links), input_bytes=input_bytes)
    shared = plan_shared_edge([EndDevice(f"{end.name}{i + 1}", problem, deadline_ms)
                               for i in range(n)], steps=steps)
    layers = [layer.name for layer in result.graph.layers]
    rows = []
    for name, cs, bs, b in zip(shared.names, shared.compute_share, shared.bandwidth_share,
                               shared.plans):
        on_end = sum(1 for d in b.assignment if d == 0)
        rows.append({"name": name, "compute_share": cs, "bandwidth_share": bs,
                     "layers_on_end": on_end, "first_on_edge": layers[on_end] if on_end < len(layers) else None,
                     "assignment": list(b.assignment), "latency_ms": b.latency_ms,
                     "compute_ms": list(b.compute_ms), "hop_ms": list(b.hop_ms),
                     "return_ms": b.return_ms})
    alone = result.predicted.latency_ms
    if as_json:
        click.echo(json.dumps({"model": result.graph.name, "end": end.name, "edge": edge.name,
                               "end_devices": rows, "worst_latency_ms": shared.worst_latency_ms,
                               "alone_latency_ms": alone, "share_steps": steps,
                               "deadline_ms": deadline_ms}, indent=2))
        return
    click.echo(f"{result.graph.name}: {n} end devices like {end.name} ({end.target}) share "
               f"{edge.name} ({edge.target}) and the {links[0].name} link into it, in shares of "
               f"1/{steps} of the edge's compute and the link's bandwidth")
    click.echo(f"{'end device':<12} {'compute':>8} {'uplink':>7} {'on end':>7}  {'first on edge':<24} "
               f"{'latency ms':>10}")
    for r in rows:
        click.echo(f"{r['name']:<12} {r['compute_share']:>8.2f} {r['bandwidth_share']:>7.2f} "
                   f"{r['layers_on_end']:>7}  {str(r['first_on_edge'] or '-')[:24]:<24} "
                   f"{r['latency_ms']:>10.3f}")
    click.echo(f"worst latency {shared.worst_latency_ms:.3f} ms (one end device alone with the "
               f"whole edge: {alone:.3f} ms)")


def _all_trained(devs) -> bool:
    from .predict.dataset import predictor_path

    return all(predictor_path(d.target).exists() for d in devs)


def _print_plan(g, result, links, objective: str) -> None:
    b = result.predicted
    click.echo(f"{g.name}: {len(g.layers)} layers over {' -> '.join(d.name for d in result.devices)}"
               f", objective {objective}, planner {result.method}")
    for layer, parts in result.horizontal:
        click.echo(f"layer {layer} fits no device: split horizontally into {parts} parts (HyPS)")
    click.echo(f"{'stage':<6} {'device':<10} {'target':<12} {'layers':>6}  {'first..last':<34} "
               f"{'compute ms':>10} {'memory MB':>9}")
    costs = dict(zip(result.plan_costs.layers, result.plan_costs.compute_ms))
    shown = set()  # memory is per device: on the first of its stages
    for stage, d in zip(result.plan.stages, result.stage_devices):
        layers = stage.layers
        memory = "" if d in shown else f"{b.memory_bytes[d] / 1e6:.2f}"
        shown.add(d)
        click.echo(f"{stage.index:<6} {result.devices[d].name:<10} {result.devices[d].target:<12} "
                   f"{len(layers):>6}  {(layers[0] + '..' + layers[-1])[:34]:<34} "
                   f"{sum(costs[name][d] for name in layers):>10.3f} {memory:>9}")
        if stage.segments:
            click.echo(f"{'':<6} sequential (HyPS): {len(stage.segments)} segment(s) loaded one at "
                       "a time: " + ", ".join(f"{s.layers[0]}..{s.layers[-1]} "
                                              f"{s.param_bytes / 1e6:.1f} MB"
                                              for s in stage.segments))
    resident_capped = sorted({result.devices[d].name for stage, d in zip(result.plan.stages,
                                                                     result.stage_devices)
                              if result.devices[d].mem_cap_bytes and not stage.segments})
    if resident_capped:  # measured: BENCHMARKS.md "HyPS on real memory limits"
        click.echo(f"memory: a capped device's figure is model bytes; a resident stage's worker "
                   f"holds its weights about twice while loaded (TVM copies them out of the "
                   f"library) plus ~40 MB: leave that room on {', '.join(resident_capped)}, or "
                   "--sequential always holds them once")
    if not result.plan.is_chain:
        edges = ", ".join(f"{s.index} -> {'/'.join('client' if r.to < 0 else str(r.to) for r in s.sends)}"
                          for s in result.plan.stages)
        click.echo(f"stage DAG ({edges}): stages with no path between them run in parallel; "
                   f"predicted latency {result.critical_path_ms:.3f} ms (the serial figure below "
                   "is an upper bound)")
    for h, link in enumerate(links):
        if b.hop_bytes[h]:
            click.echo(f"link {h} ({link.name}, {link.up_bps / 1e6:g} Mbit/s up): "
                       f"{b.hop_bytes[h] / 1024:.1f} KB, {b.hop_ms[h]:.3f} ms")
    click.echo(f"return of outputs: {b.return_ms:.3f} ms (sink: {result.sink})")
    click.echo(f"deployment: {b.deploy_ms:.3f} ms to ship each stage's weights + code from "
               f"{result.devices[0].name}" + (" (in the objective)" if b.deploy_counted else ""))
    if b.lower_bound is not None and b.lower_bound < b.objective(objective) - 1e-6:
        click.echo(f"proven bound: the optimum is >= {b.lower_bound:.6f} (solver gap or time limit)")
    if not result.exact:
        click.echo("route chosen by a heuristic (partition/routes.py: topo-dp-ilp), not proven optimal")
    click.echo(f"predicted: latency {b.latency_ms:.3f} ms, throughput "
               f"{1000.0 / b.bottleneck_ms if b.bottleneck_ms else float('inf'):.1f} req/s"
               + (f", energy {b.energy_mj:.2f} mJ" if objective == "energy" else ""))
    click.echo(f"{'baseline':<14} {'latency ms':>11} {'vs plan':>8} {'req/s':>8}   (vs plan: by the objective, {objective})")
    for name, base in result.baselines:
        if base is None:
            click.echo(f"{name:<14} {'n/a':>11}  (infeasible under the caps/pins, or not for this objective)")
            continue
        ratio = base.objective(objective) / max(b.objective(objective), 1e-12)
        click.echo(f"{name:<14} {base.latency_ms:>11.3f} {ratio:>7.2f}x "
                   f"{1000.0 / base.bottleneck_ms if base.bottleneck_ms else float('inf'):>8.1f}")


@cli.command()
@click.argument("model")
@click.option("--devices", default="end=pi-class,edge=host", show_default=True,
              metavar="END=CAPPED,EDGE=TARGET",
              help="The testbed's capped end device (pi-class, phone-class) and its edge.")
@click.option("--link", default="4g", show_default=True, metavar="LINK",
              help="The link the testbed shapes (rate each way, one-way delay, loss); "
                   + LINK_SPEC_HELP + ".")
@click.option("--load", type=click.Choice(["none", "medium", "high"]), default="none",
              show_default=True, help="Background CPU load on the end device (in its cgroup).")
@click.option("--objective", type=click.Choice(["latency", "throughput"]), default="latency",
              show_default=True)
@click.option("--requests", type=click.IntRange(3), default=30, show_default=True,
              help="Measured requests per plan, spread over the rounds.")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True,
              help="Interleaved rounds: each runs every plan in turn.")
@click.option("--input-bytes", type=int, default=None,
              help="Send a JPEG instead of the raw tensor: a synthetic scene at the model's "
                   "size, at the JPEG quality whose size is nearest this many bytes (the size "
                   "used is printed); each device's decode is measured and priced where the "
                   "first layer runs.")
@click.option("--costs", "costs_file", type=click.Path(exists=True, dir_okay=False),
              help="Plan on this cost table instead of measuring the layers on the testbed.")
@click.option("--prune", type=float, default=5.0, show_default=True, metavar="X",
              help="A plan predicted over X times slower than the best prediction is run for "
                   "one request only (0: every plan gets every round).")
@click.option("--worker", type=click.Choice(["python", "native"]), default="python",
              show_default=True,
              help="The stage workers on both devices: the Python worker, or the native one "
                   "(build/native/tvmsplit-worker; a stage that decodes a JPEG stays Python).")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True), default=120.0,
              show_default=True, metavar="S",
              help="A request slower than S seconds fails its plan: it is reported as failed, "
                   "its testbed logs kept, and the other plans go on.")
@click.option("--end-devices", type=click.IntRange(min=1, max=8), default=1, show_default=True,
              metavar="N",
              help="N end devices like END stream at once to one shared edge (core 1): the "
                   "planned compute and bandwidth shares enforced (CPU quotas, per-client "
                   "tbf) against no shares, all-edge and all-end (tvmsplit/multi_eval.py).")
@click.option("--deadline-ms", default=None, metavar="D|D1,D2,...",
              help="With --end-devices: an end device whose model alone meets its deadline "
                   "leaves the edge to the others; one for every device, or one per device "
                   "(empty: none), e.g. 900, for the first device only.")
@click.option("--share-steps", type=click.IntRange(min=1, max=100), default=20,
              show_default=True, help="With --end-devices: shares are multiples of 1/STEPS.")
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
@click.option("--save", type=click.Path(dir_okay=False), help="Also write the JSON here.")
@_interruptible
def evaluate(model, devices, link, load, objective, requests, rounds, input_bytes, costs_file,
             prune, worker, request_timeout, end_devices, deadline_ms, share_steps, shapes,
             as_json, save) -> None:
    """Run the plan the planner chooses and every alternative (all on the end device, all on
    the edge, every single cut) on the testbed (root): predicted vs measured latency, regret and
    speedup over the best single site."""
    from .devices import Device, Link
    from .evaluate import evaluate as run_evaluation, measurable_here
    from .partition import CostTable

    g = _load_graph(model, shapes)
    devs = [Device(name, target) for name, target in _parse_pairs(devices, "--devices")]
    why_not = measurable_here(devs)
    if why_not is not None:
        raise TvmsplitError(why_not)
    if end_devices > 1 or deadline_ms is not None:
        _evaluate_shared(g, devs, link, load, objective, requests, rounds, input_bytes,
                         costs_file, end_devices, deadline_ms, share_steps, as_json, save)
        return
    ev = run_evaluation(g, devices=devs, link=Link.profile(link), load=load, objective=objective,
                        requests=requests, rounds=rounds, input_bytes=input_bytes,
                        costs=CostTable.from_file(costs_file) if costs_file else None,
                        prune=prune or None, worker=worker, request_timeout_s=request_timeout,
                        log=_progress)
    data = ev.to_json()
    if _saved_or_json(data, save, as_json):
        return
    unit = data["unit"]
    click.echo(f"{g.name} on {' -> '.join(f'{d.name}={d.target}' for d in devs)}, link "
               f"{ev.link.name}, end load {load}, objective {objective} ({unit}; "
               f"{requests} requests per plan in {rounds} interleaved rounds; {worker} workers)")
    sent = data["input"]
    click.echo(f"input: {sent['bytes']} bytes, " + (
        "the raw tensor" if sent["encoding"] == "raw" else
        f"a JPEG (quality {sent['quality']}, raw tensor {sent['raw_bytes']} bytes), decoded in "
        + ", ".join(f"{ms:.2f} ms on {name}" for name, ms in sent["decode_ms"].items())))
    if objective == "throughput":
        sc = data["send_cost"]
        click.echo(f"send cost on the {sc['device']} (measured, in the bottleneck): "
                   f"{sc['ms_per_request']:.2f} ms a request + {sc['ms_per_byte'] * 1e3:.4f} ms/KB")
    click.echo(f"{'plan':<26} {'where':<9} {'predicted':>10} {'measured':>10} {'p90 ms':>8} "
               f"{'error':>7} {'spread':>7}")
    for p in data["plans"]:
        mark = "*" if p["name"] == ev.chosen else " "
        if p["failed"]:
            click.echo(f"{mark}{p['name'][:25]:<25} {'+'.join(p['placement']):<9} "
                       f"{p['predicted']:>10.2f}     FAILED {p['failed']}")
            continue
        click.echo(f"{mark}{p['name'][:25]:<25} {'+'.join(p['placement']):<9} "
                   f"{p['predicted']:>10.2f} {p['measured']:>10.2f} {p['latency_ms']['p90']:>8.2f} "
                   f"{p['error']:>+7.1%} "
                   + ("  1 req" if p["pruned"] else f"{p['spread']:>7.1%}"))
    if any(p["pruned"] for p in data["plans"]):
        click.echo(f"(1 req: predicted over {prune:g}x the best prediction, run once; --prune 0 "
                   "runs every plan in every round)")
    for label, value in ev.single_site:
        click.echo(f"single site {label:<20} {value:>10.2f} {unit}")
    if ev.failed:
        click.echo(f"{len(ev.failed)} plan(s) failed and rank last: {', '.join(ev.failed)}"
                   + (" — the chosen plan among them" if ev.chosen in ev.failed else ""))
    click.echo(f"chosen (*) {ev.chosen} by {ev.method}; best measured {data['best']}; "
               f"regret {ev.regret:.3f}; speedup over the best single site "
               f"({ev.best_single_site[0]}) {ev.speedup:.2f}x; noise floor (median spread) "
               f"{ev.noise:.1%}")


def _parse_deadlines(value: str | None, n: int) -> tuple[float | None, ...] | None:
    """``--deadline-ms``: D for every device, or D1,D2,... per device (empty: none)."""
    if value is None:
        return None
    parts = [v.strip() for v in value.split(",")]
    try:
        got = [float(v) if v else None for v in parts]
    except ValueError:
        raise TvmsplitError(f"--deadline-ms {value!r} is not D or D1,D2,... (ms), e.g. 900 or "
                            "900,") from None
    if len(got) == 1:
        return (got[0],) * n
    if len(got) != n:
        raise TvmsplitError(f"--deadline-ms {value!r} gives {len(got)} deadlines for {n} end "
                            "devices: give one, or one per device")
    return tuple(got)


def _saved_or_json(data: dict, save: str | None, as_json: bool) -> bool:
    """An evaluation's JSON: written to ``save`` if given, printed with ``--json``; True when
    printed (nothing else to show)."""
    if save:
        from .atomic import write_json

        write_json(save, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    return as_json


def _evaluate_shared(g, devs, link, load, objective, requests, rounds, input_bytes, costs_file,
                     n, deadline_ms, steps, as_json, save) -> None:
    """``evaluate --end-devices N``: N end devices share one edge (multi_eval.py)."""
    from .devices import Link
    from .multi_eval import evaluate_shared
    from .partition import CostTable

    given = [opt for opt, v in (("--load", load != "none"), ("--objective", objective != "latency"),
                                ("--input-bytes", input_bytes is not None)) if v]
    if n < 2 or given:
        raise TvmsplitError("; ".join(
            (["--deadline-ms is for --end-devices N with N >= 2"] if n < 2 else [])
            + ([f"{', '.join(given)} do not combine with --end-devices"] if given else [])))
    deadlines = _parse_deadlines(deadline_ms, n)
    ev = evaluate_shared(g, n=n, devices=devs, link=Link.profile(link), deadline_ms=deadlines,
                         steps=steps, requests=requests, rounds=rounds,
                         costs=CostTable.from_file(costs_file) if costs_file else None,
                         log=_progress)
    data = ev.to_json()
    if _saved_or_json(data, save, as_json):
        return
    click.echo(f"{g.name}: {n} end devices {devs[0].name}={devs[0].target} streaming at once to "
               f"one edge {devs[1].name}={devs[1].target}, link {ev.link.name}"
               + (f", deadlines {deadline_ms} ms" if deadline_ms is not None else "")
               + f" ({requests} requests per device per setting in {rounds} interleaved rounds)")
    click.echo(f"{'setting':<9} {'device':<7} {'compute':>7} {'uplink':>7} {'plan':<16} "
               f"{'predicted':>9} {'measured':>9} {'p90 ms':>8} {'answered':>9}")
    share = lambda v: "free" if v is None else f"{v:.2f}"  # noqa: E731
    for s in data["settings"]:
        for c in s["clients"]:
            click.echo(f"{s['name']:<9} {c['name']:<7} {share(c['compute_share']):>7} "
                       f"{share(c['bandwidth_share']):>7} {c['plan'][:16]:<16} "
                       f"{c['predicted_ms']:>9.1f} {c['measured_ms'] or float('nan'):>9.1f} "
                       f"{c['p90_ms'] or float('nan'):>8.1f} {c['answered']:>4}/{c['sent']:<4}")
    worst = ", ".join(f"{k} {v:.1f}" for k, v in data["worst_ms"].items())
    click.echo(f"worst device (ms): {worst}; planned shares vs unshared "
               f"{ev.unshared_gain or float('nan'):.2f}x, vs the best other setting "
               f"{ev.worst_gain:.2f}x; requests lost: {ev.lost}")


@cli.command()
@click.argument("keys_dir", type=click.Path(file_okay=False))
@click.option("--names", default=None, metavar="N1,N2,...",
              help="Key names.  [default: client,worker; with --stages: client,stage0,...]")
@click.option("--stages", type=click.IntRange(min=1), default=None, metavar="N",
              help="One key per stage (stage0..stageN-1) instead of the shared 'worker': each "
                   "stage's sockets then admit exactly its senders in the plan.")
@click.option("--force", is_flag=True,
              help="Overwrite existing keys (peers holding the old public keys are locked out).")
def keys(keys_dir, names, stages, force):
    """Create CurveZMQ keypairs (<name>.key public, <name>.key_secret 0600) for --secure."""
    from .runtime.security import generate_keys

    wanted = _split_list(names, "--names") if names else (
        ["client", *(f"stage{i}" for i in range(stages))] if stages else ["client", "worker"])
    if names and stages:
        wanted += [f"stage{i}" for i in range(stages) if f"stage{i}" not in wanted]
    for name, (pub, sec) in generate_keys(keys_dir, wanted, overwrite=force).items():
        click.echo(f"{name}: {pub} (public), {sec} (secret)")


@cli.command("testbed", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def testbed_cmd(args):
    """Emulated testbed (root): ARM device under qemu + x86 edge over a shaped 3G/4G/WiFi link;
    up|down|status|sysroot (see `tvmsplit testbed --help`)."""
    from .testbed.__main__ import main as testbed_main

    raise SystemExit(testbed_main(list(args), prog="tvmsplit testbed"))


def target_option(help_text: str):
    """``--target NAME`` of ``profile``, ``train`` and ``predict``: a target (a device kind in
    targets/, or a .toml file). ``--device`` is its old name, still accepted."""
    return click.option("--target", "--device", "target", required=True, metavar="TARGET",
                        help=f"{help_text} (a name in `tvmsplit targets` or a .toml file; "
                             "--device is the old name of this option).")


@cli.command()
@target_option("Target of the device to profile")
@click.option("--rpc", default=None, metavar="HOST:PORT",
              help="Measure on a remote device's RPC server (`python -m tvmsplit.rpc_device`).")
@click.option("--tracker", default=None, metavar="HOST:PORT", help="Measure through an RPC tracker.")
@click.option("--key", default=None, help="The device's key at the tracker.")
@click.option("--count", default=12, show_default=True, help="Sweep configurations per layer kind.")
@click.option("--loads", default="none", show_default=True, metavar="L1,L2,...",
              help="Background load levels to measure under (none, cpu1x50, cpu2x100+mem2g).")
@click.option("--append", is_flag=True, help="Add to the device's existing profile.")
@db_option
def profile(target, rpc, tracker, key, count, loads, append, db):
    """Measure layers (a sweep of configurations + the zoo) on a device; long runs show progress.
    Layers are built as stages are, from the target's tuning database when it has one."""
    from .sweep import profile_device

    dataset, path = profile_device(target, rpc=rpc, tracker=tracker, key=key, count=count,
                                   append=append, loads=_split_list(loads, "--loads"),
                                   progress=lambda m: click.echo(m, err=True), db=db)
    click.echo(f"profiled {len(dataset.rows)} layer measurements -> {path}")


@cli.command()
@target_option("Target whose profile to train on")
def train(target):
    """Train the target's latency predictor (XGBoost per layer type) from its profile."""
    from .predict import train_device

    predictor, path = train_device(target)
    click.echo(predictor.summary())
    click.echo(f"saved -> {path}")


@cli.command()
@click.argument("model")
@target_option("Target whose predictor to use")
@shape_option
@click.option("--json", "as_json", is_flag=True)
def predict(model, target, shapes, as_json):
    """Predict MODEL's per-layer and total latency on a target under this machine's load now."""
    from .predict import predict_model

    result = predict_model(_load_graph(model, shapes), target)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.format())


@cli.command(name="targets")
def targets_cmd() -> None:
    """List the known targets (device kinds)."""
    from .targets import known_targets

    for name, spec in sorted(known_targets().items()):
        click.echo(f"{name:<14} {spec.kind:<5} {spec.arch:<8} {spec.description}")


def main() -> None:
    cli(prog_name="tvmsplit")


if __name__ == "__main__":
    main()
