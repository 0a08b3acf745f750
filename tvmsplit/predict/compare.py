"""Comparison of regressors and ablations on held-out data (ITU-T F.748.20 section 7.2)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dataset import Dataset
from .features import feature_names, work
from .predictor import DEFAULT_ROUNDS, MIN_ROWS, baseline_k, fit_xgb, metrics


# ---- regressor comparison (ITU-T F.748.20 section 7.2) ------------------------------------------
REGRESSORS = ("FLOPs-only", "LR", "RANSAC", "KRR", "KNN", "DT", "SVM", "RF", "AdaBoost", "GBRT",
              "ANN", "XGBoost")
ABLATIONS = ("XGBoost (static only)", "XGBoost (ln ms target)")


def _sklearn_model(name: str, seed: int):
    """(estimator, needs standardised features) for a regressor name."""
    from sklearn.ensemble import (AdaBoostRegressor, GradientBoostingRegressor,
                                  RandomForestRegressor)
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LinearRegression, RANSACRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.neural_network import MLPRegressor
    from sklearn.svm import SVR
    from sklearn.tree import DecisionTreeRegressor

    return {
        "LR": (lambda: LinearRegression(), True),
        "RANSAC": (lambda: RANSACRegressor(LinearRegression(), min_samples=0.5,
                                                 random_state=seed, max_trials=200), True),
        "KRR": (lambda: KernelRidge(alpha=0.05, kernel="rbf"), True),
        "KNN": (lambda: KNeighborsRegressor(n_neighbors=5, weights="distance"), True),
        "DT": (lambda: DecisionTreeRegressor(min_samples_leaf=2, random_state=seed), False),
        "SVM": (lambda: SVR(C=10.0, epsilon=0.05, gamma="scale"), True),
        "RF": (lambda: RandomForestRegressor(n_estimators=300, min_samples_leaf=1, random_state=seed,
                                             n_jobs=1), False),
        "AdaBoost": (lambda: AdaBoostRegressor(DecisionTreeRegressor(max_depth=6), n_estimators=200,
                                               learning_rate=0.5, random_state=seed), False),
        "GBRT": (lambda: GradientBoostingRegressor(n_estimators=400, max_depth=4, learning_rate=0.05,
                                                   subsample=0.8, random_state=seed), False),
        "ANN": (lambda: MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1e-3, max_iter=3000,
                                     learning_rate_init=1e-3, random_state=seed), True),
    }[name]


def _pipeline(name: str, seed: int):
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    factory, scale = _sklearn_model(name, seed)
    steps = [SimpleImputer(strategy="median", keep_empty_features=True)]
    if scale:
        steps.append(StandardScaler())
    return make_pipeline(*steps, factory())


@dataclass
class Comparison:
    """Metrics of every regressor per layer type (plus "all") on one test set."""

    split: str
    rows: list[dict[str, Any]]
    predictions: dict[str, np.ndarray]   # regressor -> predicted ms of each test row
    test: Dataset
    notes: list[str] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: Sequence["Comparison"], split: str) -> "Comparison":
        """Pool several comparisons (e.g. the folds of leave-one-model-out) into one: metrics are
        recomputed over all their test rows together."""
        regs = list(parts[0].predictions)
        rows = [r for c in parts for r in c.test]
        preds = {name: np.concatenate([c.predictions[name] for c in parts]) for name in regs}
        true = np.array([r.ms for r in rows])
        test = Dataset(rows, parts[0].test.target)
        out = []
        for name in regs:
            for t in [*test.types(), "all"]:
                sel = np.array([t == "all" or r.layer_type == t for r in rows], dtype=bool)
                out.append({"regressor": name, "layer_type": t, **metrics(true[sel], preds[name][sel])})
        return cls(split, out, preds, test, [n for c in parts for n in c.notes])

    def get(self, regressor: str, ltype: str = "all") -> dict[str, Any]:
        return next(r for r in self.rows if r["regressor"] == regressor and r["layer_type"] == ltype)

    def to_markdown(self, types: Sequence[str] | None = None) -> str:
        if not types:
            types = [*dict.fromkeys(r["layer_type"] for r in self.rows if r["layer_type"] != "all"), "all"]
        regs = list(dict.fromkeys(r["regressor"] for r in self.rows))
        ns = {t: next((r["n"] for r in self.rows if r["layer_type"] == t), 0) for t in types}
        out = []
        for metric, label, fmt in (("mae_ms", "MAE (ms)", "{:.3f}"), ("mape_pct", "MAPE (%)", "{:.1f}"),
                                   ("r2", "R²", "{:.3f}"), ("within10_pct", "within ±10 % (%)", "{:.1f}")):
            out.append(f"**{label}** — {self.split}\n")
            out.append("| regressor | " + " | ".join(f"{t} (n={ns[t]})" for t in types) + " |")
            out.append("|---|" + "---:|" * len(types))
            for reg in regs:
                cells = []
                for t in types:
                    row = next((r for r in self.rows if r["regressor"] == reg and r["layer_type"] == t), None)
                    v = row[metric] if row else float("nan")
                    missing = v is None or (isinstance(v, float) and math.isnan(v))
                    cells.append("–" if missing else fmt.format(v))
                out.append(f"| {reg} | " + " | ".join(cells) + " |")
            out.append("")
        return "\n".join(out)


def compare_regressors(train: Dataset, test: Dataset, *, regressors: Sequence[str] | None = None,
                       split: str = "", seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> Comparison:
    """Fit every regressor per layer type on ``train`` and score it on ``test``.

    All learned regressors get the same features (static + dynamic; ``XGBoost (static only)``
    drops the dynamic ones) and the same target ``ln(ms / flops)``, standardised; ``XGBoost (ln ms
    target)`` regresses ``ln(ms)`` directly. Features are imputed and, for LR, RANSAC, KRR, KNN,
    SVM and ANN, standardised in a scikit-learn pipeline fitted on the training rows only. Learned
    predictions are clipped to the training targets' range widened by e^2 on each side (a linear
    model extrapolating to an unseen shape can otherwise be off by orders of magnitude). A type
    absent from ``train`` (or with fewer than ``MIN_ROWS`` rows) is predicted by the
    FLOPs-proportional fallback for every regressor, and noted.
    """
    import warnings

    regressors = list(regressors or REGRESSORS)
    rows_test = list(test)
    preds = {name: np.full(len(rows_test), np.nan) for name in regressors}
    notes: list[str] = []
    all_ms = np.array([r.ms for r in train])
    all_wk = np.array([work(r.layer) for r in train])
    global_k = baseline_k(all_ms, all_wk) if len(all_ms) else 1e-6
    for t in test.types():
        idx = [i for i, r in enumerate(rows_test) if r.layer_type == t]
        test_t = Dataset([rows_test[i] for i in idx])
        n_train = len(train.of_type(t))
        for name in regressors:
            dynamic = name != "XGBoost (static only)"
            names = feature_names(t, dynamic)
            Xte, _, wk_te = test_t.matrix(t, names)
            if n_train < MIN_ROWS:
                k = baseline_k(*train.matrix(t, names)[1:]) if n_train else global_k
                preds[name][idx] = k * wk_te
                if name == regressors[0]:
                    notes.append(f"{t}: {n_train} training rows; every regressor uses the FLOPs fallback")
                continue
            Xtr, ms_tr, wk_tr = train.matrix(t, names)
            if name == "FLOPs-only":
                preds[name][idx] = baseline_k(ms_tr, wk_tr) * wk_te
                continue
            log_target = name == "XGBoost (ln ms target)"
            y = np.log(ms_tr) - (0 if log_target else np.log(wk_tr))
            if name.startswith("XGBoost"):
                booster = fit_xgb(Xtr, y, names, None, DEFAULT_ROUNDS, seed)
                p = np.asarray(booster.inplace_predict(Xte), dtype=np.float64)
            else:
                mu, sd = float(y.mean()), float(y.std()) or 1.0
                model = _pipeline(name, seed)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(Xtr, (y - mu) / sd)
                        p = model.predict(Xte) * sd + mu
                except Exception as exc:  # e.g. RANSAC finding no consensus set
                    notes.append(f"{name} on {t}: fit failed ({type(exc).__name__}: {exc}); "
                                 "FLOPs-only used instead")
                    p = np.log(np.full(len(idx), baseline_k(ms_tr, wk_tr)))
            # A linear model (LR, RANSAC, ANN) can extrapolate wildly on an unseen shape; keep
            # every prediction within e^2 (7.4x) of the training targets' range.
            p = np.clip(p, y.min() - 2.0, y.max() + 2.0)
            preds[name][idx] = np.exp(p) * (1 if log_target else wk_te)
            if progress:
                progress(f"{split or 'comparison'}: {name} on {t} ({n_train} train, {len(idx)} test rows)")
    out_rows = []
    true = np.array([r.ms for r in rows_test])
    types = test.types()
    for name in regressors:
        for t in [*types, "all"]:
            sel = np.array([t == "all" or r.layer_type == t for r in rows_test], dtype=bool)
            out_rows.append({"regressor": name, "layer_type": t, **metrics(true[sel], preds[name][sel])})
    return Comparison(split, out_rows, preds, test, notes)
