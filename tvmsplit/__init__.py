"""tvmsplit: split a DNN into parts, compile each with Apache TVM for its device, run them as a pipeline.

    import tvmsplit as ts
    g = ts.load("model.onnx", shapes={"x": (1, 3, 224, 224)})
    plan = ts.plan_split(g, split_at=["pool3"], targets=["rpi4b", "x86_64"])
    bundle = ts.build_bundle(g, plan, "build/model")

Importing tvmsplit does not import TVM; the functions that compile or run do.
"""
__version__ = "0.1.0"

from .bundle import Bundle, BundleStage, build_bundle  # noqa: E402
from .errors import TvmsplitError  # noqa: E402
from .frontend import load  # noqa: E402
from .graph import Cut, Layer, LayerGraph, TensorSpec  # noqa: E402
from .split import Plan, StagePlan, plan_split  # noqa: E402
from .targets import TargetSpec, get_target, known_targets  # noqa: E402

__all__ = [
    "Bundle", "BundleStage", "Cut", "Layer", "LayerGraph", "Plan", "StagePlan", "TargetSpec",
    "TensorSpec", "TvmsplitError", "build_bundle", "get_target", "known_targets", "load",
    "plan_split", "__version__",
]
