"""Load-aware layer latency prediction (ITU-T F.748.20 section 7).

A layer's latency on a device is predicted from

- its *static* features (section 7.1): for a convolution the input size (C, H, W), kernel,
  output channels, stride, padding and groups; for a dense layer its input/output sizes; for
  pooling kernel, stride and input size; for elementwise layers the number of elements; for every
  layer its FLOPs, MACs, weight bytes, input/output bytes and the operators fused into it, and
- the device's *dynamic* state when it runs (``monitor.DeviceState``): CPU utilisation, system CPU
  time, free memory, memory usage and load average, plus the run-queue length per core
  (``monitor.DeviceState``; on a saturated CPU it is the only reading that still tracks the slowdown).

Layers are grouped into coarse types (``LAYER_TYPES``: conv, depthwise_conv, dense, pool,
elementwise, concat, recurrent (LSTM/GRU/RNN: steps, hidden size, directions, gates), other) and
one regressor is trained per type; XGBoost by default.

Regression target: ``ln(ms / work)`` with ``work = max(flops, 1)``, i.e. the log of the time per
FLOP. Latencies span four orders of magnitude (2 us .. 50 ms) and the goals are relative (MAPE,
share within +-10 %), so a squared error on the log is the right loss (it is the relative error
to first order) and predictions stay positive. Dividing by the FLOPs lets tree ensembles, which
cannot extrapolate, still scale to a layer larger than any they saw: the tree only has to learn
how efficient a shape runs under a load, the size comes from the FLOPs. ``bench_predict.py``
compares it with a plain ``ln(ms)`` target. A type never seen in training (or with fewer than
``MIN_ROWS`` rows) falls back to the FLOPs-proportional baseline ``ms = k_type * flops``.

Optionally (``Predictor.train(tuning=True)``) also how much of the layer's build was tuned
(``TUNING_FEATURES``: the share of its kernels scheduled from a tuning database, from the row's
"N/M kernels tuned" record; pass ``tuned_fraction=`` to ``predict_layers``). Every row also keeps
its measurement's noise floor (``Row.noise``: median |repeat - median| / median).

The database prior (``Predictor.train(prior=True)``; ``train_device`` turns it on when the
profile was measured from a tuning database): a layer built from tuning records already has a
measured time, the one MetaSchedule recorded for those kernels (``Row.recorded_ms``,
``tunedb.recorded_ms``). One model over all layer types learns ``ln(ms / recorded_ms)`` from the
live load (the call overhead and the load, not the operator); ``predict_model`` reads each
layer's recorded time from the device's database (``database_times``) and layers without one use
their type's model. ``bench/bench_predictor.py`` checks all of it on held-out zoo models.

Files (one JSON file per device, schema ``SCHEMA_VERSION``; see ``Predictor.save``) are tied to the
target they were trained for; ``Predictor.load(path, target=...)`` refuses a file trained for
another target, of another schema, missing or corrupt, with the command that fixes it.

Datasets (``Dataset``) hold one row per measured layer: the layer's description (so features can
be recomputed when their definition changes), the device state, the measured median ms, and the
model / configuration / load level it came from (for held-out splits).

Modules: ``features`` (layer types, static/dynamic features, layers as JSON), ``dataset`` (rows,
datasets, held-out splits, file paths), ``predictor`` (the per-type models, whole-graph
predictions, metrics), ``compare`` (the regressor comparison of ``bench_predict.py``); their
errors are in ``errors``. Every public name is re-exported here, except the file helper
``dataset.write_atomic`` (shared by ``Dataset.save`` and ``Predictor.save``).
"""
from __future__ import annotations

from .compare import ABLATIONS, REGRESSORS, Comparison, compare_regressors
from .dataset import (DATASET_FORMAT, DATASET_SCHEMA_VERSION, Dataset, Row, dataset_path, predictor_path,
                      predictors_dir, split_by_config, split_by_model)
from .errors import (PredictorCorruptError, PredictorError, PredictorMissingError, PredictorTargetError,
                     PredictorVersionError)
from .features import (DYNAMIC_FEATURES, LAYER_TYPES, STATIC_FEATURES, TUNING_FEATURES, config_id,
                       dynamic_features, feature_names, layer_from_json, layer_to_json, layer_type,
                       live_snapshot, state_from_json, static_features, tuned_fraction, work)
from .predictor import (DEFAULT_ROUNDS, DEFAULT_XGB_PARAMS, FORMAT, MIN_ROWS, SCHEMA_VERSION,
                        GraphPrediction, LayerPrediction, Predictor, TypeModel, baseline_k, cost_table,
                        database_times, fit_xgb, metrics, predict_graph, predict_model,
                        train_device)

__all__ = [
    # features
    "LAYER_TYPES", "DYNAMIC_FEATURES", "STATIC_FEATURES", "TUNING_FEATURES", "tuned_fraction",
    "live_snapshot",
    "state_from_json", "layer_type", "static_features", "dynamic_features", "feature_names", "work",
    "layer_to_json", "layer_from_json", "config_id",
    # dataset
    "DATASET_SCHEMA_VERSION", "DATASET_FORMAT", "predictors_dir", "predictor_path", "dataset_path",
    "Row", "Dataset", "split_by_config", "split_by_model",
    # errors
    "PredictorError", "PredictorMissingError", "PredictorCorruptError", "PredictorVersionError",
    "PredictorTargetError",
    # predictor
    "SCHEMA_VERSION", "FORMAT", "MIN_ROWS", "metrics", "DEFAULT_XGB_PARAMS", "DEFAULT_ROUNDS",
    "TypeModel", "LayerPrediction", "GraphPrediction", "Predictor", "predict_graph", "predict_model", "database_times",
    "train_device", "cost_table", "baseline_k", "fit_xgb",
    # compare
    "REGRESSORS", "ABLATIONS", "Comparison", "compare_regressors",
]
