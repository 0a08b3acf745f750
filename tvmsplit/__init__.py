"""tvmsplit: split a DNN into parts, compile each with Apache TVM for its device, run them as a pipeline.

    import tvmsplit as ts
    g = ts.load("model.onnx", shapes={"x": (1, 3, 224, 224)})
    plan = ts.plan_split(g, split_at=["pool3"], targets=["rpi4b", "x86_64"])
    bundle = ts.build_bundle(g, plan, "build/model")
    # or plan from per-block times and sizes measured by another tool (no ONNX):
    planned = ts.plan_profile("profile.csv", [ts.Device("pi", "rpi4b"), ts.Device("edge", "x86_64")],
                              [ts.Link.profile("wan:1.6/1.6/delay=66.7ms")])

Importing tvmsplit does not import TVM; the functions that compile or run do.
"""
__version__ = "0.1.0"

import importlib

# Public name -> module. Loaded on first use (PEP 562), so a runtime-only stage worker that
# imports tvmsplit.runtime does not pay for onnx or TVM's compiler.
_EXPORTS = {
    "Bundle": "bundle", "BundleStage": "bundle", "build_bundle": "build",
    "BlockProfile": "blockprofile", "read_block_profile": "blockprofile",
    "plan_profile": "blockprofile",
    "Device": "devices", "Link": "devices", "TvmsplitError": "errors", "load": "frontend",
    "Cut": "graph", "Layer": "graph", "LayerGraph": "graph", "TensorSpec": "graph",
    "Plan": "plan", "PlanFile": "plan", "Route": "plan", "StagePlan": "plan",
    "read_plan_file": "plan", "plan_split": "split",
    "TargetSpec": "targets", "get_target": "targets", "known_targets": "targets",
    "Pipeline": "runtime.pipeline", "PipelineError": "runtime.pipeline", "Trace": "runtime.pipeline",
    "WorkerSpec": "runtime.launch",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tvmsplit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
