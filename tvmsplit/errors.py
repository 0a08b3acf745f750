"""Errors that tell the user what was wrong, what was expected and how to fix it.

Every error raised on bad user input is a :class:`TvmsplitError`; the CLI turns it into a one-line
message and exit code 1. Never raise these for internal bugs, and never ``assert`` on user input.
"""
from __future__ import annotations


class TvmsplitError(Exception):
    """Base class: a problem with the user's input or environment, with a fix in the message."""


class ModelError(TvmsplitError):
    """The model file cannot be read or is not a valid ONNX model."""


class UnsupportedOpsError(ModelError):
    """The model uses operators that the TVM importer cannot convert (all of them are listed)."""

    def __init__(self, ops: dict[str, list[str]], importer: str = "ONNX"):
        self.ops = dict(ops)
        listed = "; ".join(f"{op} (nodes: {', '.join(nodes[:5])}{', ...' if len(nodes) > 5 else ''})"
                           for op, nodes in sorted(self.ops.items()))
        super().__init__(f"model uses {len(self.ops)} operator(s) that TVM 0.27's {importer} importer "
                         f"cannot convert (or in a form tvmsplit cannot rewrite): {listed}; the "
                         "model is refused before splitting: re-export it without them "
                         "(another opset or exporter option) or replace them with supported ops"
                         + ("; or pass --fallback onnxruntime (Python: fallback='onnxruntime') "
                            "to run the stages holding them under onnxruntime"
                            if importer == "ONNX" else ""))


class ShapeError(TvmsplitError):
    """An input shape is missing, dynamic or does not match."""


class SplitError(TvmsplitError):
    """A split point or stage assignment is invalid."""


class TargetError(TvmsplitError):
    """A target (device kind) is unknown or its definition is invalid."""


class BuildError(TvmsplitError):
    """Compiling a stage failed."""


class BundleError(TvmsplitError):
    """A bundle on disk is missing, corrupt or of an unknown schema."""


class WireError(TvmsplitError):
    """A message on the wire is malformed, oversized or of an unknown version."""
