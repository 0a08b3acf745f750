"""The ``tvmsplit`` command line. TVM is imported lazily, so ``--help`` is instant.

Every TvmsplitError becomes one line on stderr (``error: ...``) and exit code 1.
A MODEL argument is a path to an .onnx file or ``zoo:NAME`` for a built-in model.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

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


def _load_graph(model: str, shapes: tuple[str, ...]):
    from . import zoo
    from .frontend import load

    pinned = _parse_shapes(shapes)
    if model.startswith("zoo:"):
        name = model[4:]
        return load(zoo.make(name), shapes=pinned or None, name=name)
    return load(model, shapes=pinned or None)


def _split_list(value: str | None, option: str) -> list[str]:
    items = [v.strip() for v in (value or "").split(",")]
    if value and not all(items):
        raise TvmsplitError(f"{option} {value!r} has an empty entry; separate names with single commas")
    return [v for v in items if v]


def _progress(msg: str) -> None:
    click.echo(f"  {msg}", err=True)


shape_option = click.option("--shape", "shapes", multiple=True, metavar="NAME=D1,D2,...",
                            help="Pin an input's shape (repeatable), e.g. x=1,3,224,224.")


class UserError(click.ClickException):
    """A TvmsplitError shown as one line, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


class TvmsplitGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TvmsplitError as exc:
            raise UserError(str(exc)) from exc


@click.group(cls=TvmsplitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tvmsplit")
def cli() -> None:
    """Split DNNs into parts, compile each with Apache TVM for its device, and check them."""


@cli.command()
@click.argument("model")
@shape_option
@click.option("--json", "as_json", is_flag=True, help="Print the layer graph as JSON.")
def inspect(model: str, shapes: tuple[str, ...], as_json: bool) -> None:
    """List MODEL's layers with their features; '*' marks good cut points."""
    g = _load_graph(model, shapes)
    cuts = {c.index: c for c in g.cut_candidates}
    if as_json:
        click.echo(json.dumps(_graph_json(g, cuts), indent=2))
        return
    click.echo(f"{g.name}: {len(g.layers)} layers, {g.param_bytes / 1024:.1f} KB params, "
               f"input {', '.join(f'{t.name}{list(t.shape)}' for t in g.inputs)} "
               f"({g.input_bytes / 1024:.1f} KB)")
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
                   f"{layer.output_bytes / 1024:>9.1f} {cut_kb:>9}{mark}")
    click.echo("cut KB: bytes crossing a cut after the layer (/Nt: N tensors); "
               "* = fewer bytes than the cut before and than the input")


def _graph_json(g, cuts) -> dict:
    return {
        "model": g.name, "model_sha256": g.model_sha256,
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
@click.option("--split-at", default="", metavar="L1,L2,...",
              help="Cut after these layers (names from `tvmsplit inspect`).")
@click.option("--targets", default="x86_64", metavar="T1,T2,...", show_default=True,
              help="One target per stage, or one for all (names from `tvmsplit targets`, or .toml files).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to write (replaced if it holds a bundle).")
@shape_option
@click.option("--check", is_flag=True, help="Run host-runnable stages and compare with onnxruntime.")
@click.option("--tolerance", default=1e-4, show_default=True, help="Max relative error for --check.")
def build(model: str, split_at: str, targets: str, out_dir: str, shapes: tuple[str, ...],
          check: bool, tolerance: float) -> None:
    """Split MODEL, compile every stage for its target and write a bundle."""
    g = _load_graph(model, shapes)
    _build_and_check(g, _split_list(split_at, "--split-at"), _split_list(targets, "--targets"),
                     out_dir, check, tolerance)


def _build_and_check(g, split_at: list[str], targets: list[str], out_dir: str, check: bool,
                     tolerance: float) -> None:
    from .bundle import build_bundle, check_output_dir
    from .split import plan_split
    from .targets import get_target

    for t in targets:
        get_target(t)  # unknown targets fail before anything is built
    plan = plan_split(g, split_at, targets or ["x86_64"])
    check_output_dir(out_dir)
    click.echo(f"building {len(plan.stages)} stage(s) of {g.name} into {out_dir}", err=True)
    start = time.perf_counter()
    bundle = build_bundle(g, plan, out_dir, progress=_progress)
    click.echo(f"built in {time.perf_counter() - start:.1f} s", err=True)
    for stage in bundle.stages:
        cut = ", ".join(f"{t.name}{list(t.shape)}" for t in stage.plan.outputs)
        click.echo(f"stage {stage.index} [{stage.target['name']}] {len(stage.plan.layers)} layers "
                   f"{stage.plan.layers[0]}..{stage.plan.layers[-1]}  params "
                   f"{stage.plan.param_bytes / 1024:.1f} KB  library {stage.library_bytes / 1024:.1f} KB"
                   f"  -> {cut}")
    if check:
        _report_check(bundle, g, tolerance)


def _report_check(bundle, g, tolerance: float) -> None:
    from .check import check_bundle

    report = check_bundle(bundle, g, tolerance=tolerance)
    for s in report.stages:
        if not s.ran:
            click.echo(f"check stage {s.index} [{s.target}]: not runnable on this machine, skipped")
            continue
        fed = "chained" if s.chained else "fed onnxruntime's inputs"
        worst = max(s.errors, key=lambda e: e.rel)
        click.echo(f"check stage {s.index} [{s.target}] ({fed}): max abs err {worst.max_abs:.3g}, "
                   f"max rel err {worst.rel:.3g}")
    verdict = "OK" if report.ok else "FAILED"
    click.echo(f"check vs onnxruntime: max abs err {report.max_abs:.3g}, max rel err "
               f"{report.rel:.3g} (tolerance {tolerance:g}) {verdict}")
    if not report.ok:
        raise SystemExit(1)


@cli.command()
@click.option("-o", "--output", "out_dir", default="build/demo", show_default=True,
              type=click.Path(file_okay=False))
def demo(out_dir: str) -> None:
    """The main job on a built-in model: inspect, split 3 ways (x86_64, rpi4b, x86_64), build, check."""
    from . import zoo
    from .frontend import load

    g = load(zoo.make("resnet"), name="resnet")
    good = [c for c in g.cut_candidates if g.good_cut(c)]
    inside = next(c for c in g.cut_candidates if len(c.tensors) > 1)  # a cut inside a skip connection
    first = good[0] if good and good[0].index != inside.index else g.cut_candidates[0]
    split_at = sorted({first.after, inside.after}, key=g.index)
    click.echo(f"model: zoo resnet, {len(g.layers)} layers; cutting after {', '.join(split_at)} "
               f"({len(inside.tensors)} tensors cross the cut after {inside.after})")
    _build_and_check(g, split_at, ["x86_64", "rpi4b", "x86_64"], out_dir, True, 1e-4)


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


@cli.command(name="targets")
def targets_cmd() -> None:
    """List the known targets (device kinds)."""
    from .targets import known_targets

    for name, spec in sorted(known_targets().items()):
        click.echo(f"{name:<14} {spec.kind:<5} {spec.arch:<8} {spec.description}")


def main() -> None:
    cli(prog_name="tvmsplit")
