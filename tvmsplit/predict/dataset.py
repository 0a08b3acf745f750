"""Profile datasets (``Row``, ``Dataset``), held-out splits, file paths and atomic writes."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..graph import Layer, LayerGraph
from ..monitor import DeviceState
from .errors import (PredictorCorruptError, PredictorError, PredictorMissingError, PredictorTargetError,
                     PredictorVersionError)
from .features import (LAYER_TYPES, config_id, dynamic_features, feature_names, layer_from_json,
                       layer_to_json, layer_type, state_from_json, static_features, tuned_fraction, work)

DATASET_SCHEMA_VERSION = 1
DATASET_FORMAT = "tvmsplit-dataset"


# ---- paths ------------------------------------------------------------------------------------
def predictors_dir() -> Path:
    """Where per-device predictors and profiles live: $TVMSPLIT_PREDICTORS, else
    $XDG_DATA_HOME/tvmsplit/predictors, else ~/.local/share/tvmsplit/predictors."""
    if os.environ.get("TVMSPLIT_PREDICTORS"):
        return Path(os.environ["TVMSPLIT_PREDICTORS"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tvmsplit" / "predictors"


def _device_name(device: str | Any) -> str:
    from ..targets import get_target

    return get_target(device).name


def predictor_path(device: str) -> Path:
    """Default predictor file of a device (target name or .toml path)."""
    return predictors_dir() / f"{_device_name(device)}.predictor.json"


def dataset_path(device: str) -> Path:
    """Default profile dataset of a device (what ``tvmsplit profile`` writes)."""
    return predictors_dir() / f"{_device_name(device)}.dataset.json"


# ---- dataset ----------------------------------------------------------------------------------
@dataclass
class Row:
    """One measured layer: what it is, the device state, and the measured median time."""

    layer: Layer
    state: DeviceState | None
    ms: float
    std_ms: float = 0.0
    model_id: str = ""
    config_id: str = ""
    load: str = ""
    tuning: str = ""   # the tuning database the measured build used (profile.LayerMeasurement)
    noise: float = 0.0  # median(|repeat - median|) / median of the repeats: the noise floor
    recorded_ms: float = math.nan  # the tuning database's measured time of the layer's kernels
    _features: dict[str, float] | None = field(default=None, repr=False, compare=False)

    @property
    def layer_type(self) -> str:
        return layer_type(self.layer)

    @property
    def tuned_fraction(self) -> float:
        """Share of the layer's kernels scheduled from a tuning database (NaN: not recorded)."""
        return tuned_fraction(self.tuning)

    def features(self) -> dict[str, float]:
        """Static and dynamic features (``tuned_fraction`` is its own property)."""
        if self._features is None:
            self._features = {**static_features(self.layer), **dynamic_features(self.state)}
        return self._features

    def to_json(self) -> dict[str, Any]:
        state = None
        if self.state is not None:   # NaN (an unknown reading) is not JSON: write null
            state = {k: None if isinstance(v, float) and math.isnan(v) else v
                     for k, v in self.state.to_json().items()}
        return {"layer_type": self.layer_type, "layer": layer_to_json(self.layer), "state": state,
                "ms": self.ms, "std_ms": self.std_ms, "model_id": self.model_id,
                "config_id": self.config_id, "load": self.load, "tuning": self.tuning,
                "noise": self.noise,
                "recorded_ms": None if math.isnan(self.recorded_ms) else self.recorded_ms}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Row":
        return cls(layer_from_json(d["layer"]), state_from_json(d.get("state")),
                   float(d["ms"]), float(d.get("std_ms", 0.0)), str(d.get("model_id", "")),
                   str(d.get("config_id", "")), str(d.get("load", "")), str(d.get("tuning", "")),
                   float(d.get("noise", 0.0)),
                   math.nan if d.get("recorded_ms") is None else float(d["recorded_ms"]))


class Dataset:
    """Rows of measured layers for one target (a device kind); saved as one JSON file."""

    def __init__(self, rows: Iterable[Row] = (), target: str | None = None):
        self.rows: list[Row] = list(rows)
        self.target = target

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"Dataset({len(self.rows)} rows, target={self.target!r}, types={self.counts()})"

    def add(self, graph: LayerGraph, measurements: Sequence[Any], *, model_id: str | None = None,
            load: str = "") -> None:
        """Add profile_layers() results of ``graph`` (matched to its layers by name)."""
        mid = model_id or graph.name
        for m in measurements:
            layer = graph.layer(m.layer)
            self.rows.append(Row(layer, m.state, float(m.timing.median_ms), float(m.timing.std_ms),
                                 mid, config_id(layer), load, getattr(m, "tuning", ""),
                                 m.timing.noise, float(getattr(m, "recorded_ms", math.nan))))

    def extend(self, other: "Dataset") -> None:
        self.rows.extend(other.rows)

    def subset(self, keep: Callable[[Row], bool]) -> "Dataset":
        return Dataset([r for r in self.rows if keep(r)], self.target)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.rows:
            out[r.layer_type] += 1
        return dict(sorted(out.items()))

    def types(self) -> list[str]:
        return [t for t in LAYER_TYPES if any(r.layer_type == t for r in self.rows)]

    def of_type(self, ltype: str) -> list[Row]:
        return [r for r in self.rows if r.layer_type == ltype]

    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model_id for r in self.rows))

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps([r.to_json() for r in self.rows], sort_keys=True)
                              .encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"format": DATASET_FORMAT, "schema_version": DATASET_SCHEMA_VERSION,
                "target": self.target, "rows": [r.to_json() for r in self.rows]}

    def save(self, path: str | os.PathLike) -> Path:
        return write_atomic(Path(path), json.dumps(self.to_json()) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, target: str | None = None) -> "Dataset":
        """Read a dataset; with ``target`` also check it was measured for that target."""
        path = Path(path)
        device = _device_name(target) if target else "DEVICE"
        if not path.is_file():
            raise PredictorMissingError(f"no profile dataset at {str(path)!r}; run "
                                        f"`tvmsplit profile --target {device}`")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != DATASET_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {DATASET_FORMAT!r}")
            version = data.get("schema_version")
            if version != DATASET_SCHEMA_VERSION:
                raise PredictorVersionError(
                    f"{path} is a profile dataset of schema version {version}; this tvmsplit reads "
                    f"version {DATASET_SCHEMA_VERSION}; run `tvmsplit profile --target {device}` again")
            ds = cls([Row.from_json(r) for r in data["rows"]], data.get("target"))
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorCorruptError(f"{path} is not a readable profile dataset "
                                        f"({type(exc).__name__}: {exc}); run `tvmsplit profile "
                                        f"--target {device}` again") from None
        if target is not None and ds.target is not None and ds.target != device:
            raise PredictorTargetError(f"{path} was measured for {ds.target}, you asked for "
                                       f"{device}; run `tvmsplit profile --target {device}`")
        return ds

    # ---- matrices ------------------------------------------------------------------------
    def matrix(self, ltype: str, names: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, ms, work) of the rows of one type, features in ``names`` order."""
        rows = self.of_type(ltype)
        names = names or feature_names(ltype)
        X = np.array([[r.tuned_fraction if n == "tuned_fraction" else r.features()[n] for n in names]
                      for r in rows], dtype=np.float64)
        X = X.reshape(len(rows), len(names))
        ms = np.maximum(np.array([r.ms for r in rows], dtype=np.float64), 1e-6)  # ln() needs > 0
        wk = np.array([work(r.layer) for r in rows], dtype=np.float64)
        return X, ms, wk


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- splits -----------------------------------------------------------------------------------
def split_by_config(ds: Dataset, test_fraction: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Hold out whole layer configurations (all their load levels and models), per layer type."""
    rng = np.random.default_rng(seed)
    test_ids: set[str] = set()
    for t in ds.types():
        ids = sorted({r.config_id for r in ds.of_type(t)})
        n = int(round(len(ids) * test_fraction))
        if len(ids) >= 4:
            n = max(1, n)
        test_ids.update(rng.permutation(np.array(ids, dtype=object))[:n].tolist())
    return ds.subset(lambda r: r.config_id not in test_ids), ds.subset(lambda r: r.config_id in test_ids)


def split_by_model(ds: Dataset, test_models: Iterable[str]) -> tuple[Dataset, Dataset]:
    """Hold out whole models; training rows of any configuration that occurs in them are dropped
    too, so the held-out models' layers were never seen in training."""
    test_models = set(test_models)
    unknown = test_models - set(ds.models())
    if unknown:
        raise PredictorError(f"no rows of model(s) {', '.join(sorted(unknown))} in the dataset")
    test = ds.subset(lambda r: r.model_id in test_models)
    seen = {r.config_id for r in test}
    return ds.subset(lambda r: r.model_id not in test_models and r.config_id not in seen), test
