"""The field's metrics, one function per data kind (sentiment, emotion, depression).

Sentiment follows the definitions MMSA, MISA and MulT share (MMSA ``MetricsTop``):
- Acc2/F1 ``has0``: pred >= 0 vs label >= 0 over all samples; ``non0``: pred > 0 vs label > 0 over
  samples whose label is non-zero. F1 is support-weighted.
- Acc5/Acc7: clip to [-2, 2] / [-3, 3], round (half to even, as ``np.round``), compare.
- MAE on unclipped predictions; Pearson Corr (NaN, not a crash, for a constant prediction).

Emotion reports MulT's per-emotion binary accuracy and weighted F1 (``emotion_metrics``);
depression the PHQ-9 errors and the binary decision PHQ-9 > 9 (``depression_metrics``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

Metrics = dict[str, float]


def _as_1d(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def pearson(pred: np.ndarray, label: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (undefined), never an exception."""
    pred, label = _as_1d(pred), _as_1d(label)
    if len(pred) < 2 or np.std(pred) == 0 or np.std(label) == 0:
        return float("nan")
    return float(np.corrcoef(pred, label)[0, 1])


def sentiment_metrics(pred, label) -> Metrics:
    from sklearn.metrics import accuracy_score, f1_score  # sklearn, scipy, pandas: ~3 s to import

    pred, label = _as_1d(pred), _as_1d(label)
    if pred.shape != label.shape or pred.size == 0:
        raise ValueError(
            f"pred and label must be non-empty and equal length, got {pred.shape} and {label.shape}"
        )
    non0 = label != 0
    out: Metrics = {
        "acc2_has0": float(accuracy_score(label >= 0, pred >= 0)),
        "f1_has0": float(f1_score(label >= 0, pred >= 0, average="weighted")),
    }
    if non0.any():
        out["acc2_non0"] = float(accuracy_score(label[non0] > 0, pred[non0] > 0))
        out["f1_non0"] = float(f1_score(label[non0] > 0, pred[non0] > 0, average="weighted"))
    else:
        out["acc2_non0"] = out["f1_non0"] = float("nan")
    out["acc5"] = float(np.mean(np.round(np.clip(pred, -2, 2)) == np.round(np.clip(label, -2, 2))))
    out["acc7"] = float(np.mean(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(label, -3, 3))))
    out["mae"] = float(np.mean(np.abs(pred - label)))
    out["corr"] = pearson(pred, label)
    return out


def emotion_metrics(logits, label, class_names: Sequence[str] | None = None) -> Metrics:
    """Multi-class emotion (IEMOCAP 4-class).

    Multi-class: ``acc``, ``f1_weighted`` and ``f1_macro``. Per emotion, MulT's IEMOCAP convention
    (``eval_iemocap``): on that emotion's one-vs-rest binary problem, ``acc_<name>`` is
    ``accuracy_score`` and ``f1_<name>`` is ``f1_score(..., average="weighted")``; ``acc_avg`` and
    ``f1_avg`` average them over emotions (the figures MMCL's Table I compares with).
    ``f1pos_<name>`` is the positive-class binary F1 (an emotion's own F1); their mean is
    ``f1_macro``, so it has no separate average.
    """
    from sklearn.metrics import accuracy_score, f1_score

    logits = np.asarray(logits, dtype=np.float64)
    label = np.asarray(label).reshape(-1).astype(np.int64)
    pred = logits.argmax(axis=1) if logits.ndim == 2 else logits.reshape(-1).astype(np.int64)
    n_classes = logits.shape[1] if logits.ndim == 2 else int(max(pred.max(), label.max()) + 1)
    names = list(class_names) if class_names else [str(c) for c in range(n_classes)]
    out: Metrics = {
        "acc": float(accuracy_score(label, pred)),
        "f1_weighted": float(
            f1_score(label, pred, average="weighted", labels=range(n_classes), zero_division=0)
        ),
        "f1_macro": float(
            f1_score(label, pred, average="macro", labels=range(n_classes), zero_division=0)
        ),
    }
    accs, f1s = [], []
    for c, name in enumerate(names):
        t, p = label == c, pred == c
        accs.append(float(accuracy_score(t, p)))
        f1s.append(
            float(f1_score(t, p, average="weighted", zero_division=0))
        )  # MulT's eval_iemocap
        out[f"acc_{name}"], out[f"f1_{name}"] = accs[-1], f1s[-1]
        out[f"f1pos_{name}"] = float(f1_score(t, p, zero_division=0))
    out["acc_avg"], out["f1_avg"] = float(np.mean(accs)), float(np.mean(f1s))
    return out


def depression_metrics(pred, label, threshold: float = 9.0) -> Metrics:
    """PHQ-9 regression (0-27) and the binary decision ``score > threshold``.

    The MMCL paper divides subjects "based on a clinical threshold score of 9"; we read it as
    depressed when PHQ-9 > 9 (i.e. >= 10 on integer scores, the usual moderate-depression cut-off).
    """
    from sklearn.metrics import f1_score, precision_score, recall_score

    pred, label = _as_1d(pred), _as_1d(label)
    yt, yp = label > threshold, pred > threshold
    return {
        "mae": float(np.mean(np.abs(pred - label))),
        "rmse": float(np.sqrt(np.mean((pred - label) ** 2))),
        "corr": pearson(pred, label),
        "precision": float(precision_score(yt, yp, zero_division=0)),
        "recall": float(recall_score(yt, yp, zero_division=0)),
        "f1": float(f1_score(yt, yp, zero_division=0)),
    }


# Which metric selects the best epoch, and in which direction, per data kind: valid MAE for the
# regressions, valid multi-class weighted F1 for emotion (robust to IEMOCAP's class imbalance, where
# accuracy rewards the majority class). ``tasks.config`` resolves ``train.select_metric: auto`` to
# these.
DEFAULT_SELECTION: dict[str, tuple[str, str]] = {
    "sentiment": ("valid/mae", "min"),
    "emotion": ("valid/f1_weighted", "max"),
    "depression": ("valid/mae", "min"),
}
DATA_KINDS: tuple[str, ...] = tuple(DEFAULT_SELECTION)
# Errors and losses are minimised; every other metric (accuracy, F1, correlation, ...) maximised.
_LOWER_IS_BETTER = ("loss", "mae", "rmse", "mse")


def selection_mode(metric: str) -> str:
    """``"min"`` for an error or loss (``valid/mae``, ``valid/loss``), ``"max"`` otherwise."""
    name = metric.split("/", 1)[-1]
    return "min" if any(name == k or name.startswith(k) for k in _LOWER_IS_BETTER) else "max"


def metric_names(
    data_kind: str, class_names: Sequence[str] | None = None, num_classes: int = 4
) -> list[str]:
    """The names ``metric_fn(data_kind)`` computes (unprefixed), from a tiny dummy evaluation."""
    return list(
        _metric_names(data_kind, tuple(class_names) if class_names else None, int(num_classes))
    )


@functools.lru_cache(maxsize=64)
def _metric_names(
    data_kind: str, class_names: tuple[str, ...] | None, num_classes: int
) -> tuple[str, ...]:
    if data_kind == "emotion":
        n = len(class_names) if class_names else max(num_classes, 2)
        dummy = metric_fn(data_kind, class_names)(np.eye(n), np.arange(n))
    else:
        dummy = metric_fn(data_kind)(np.array([1.0, -1.0, 11.0]), np.array([2.0, -2.0, 12.0]))
    return tuple(sorted(dummy))


# The headline metrics each data kind shows in tables.
HEADLINE: dict[str, tuple[str, ...]] = {
    "sentiment": ("acc2_non0", "f1_non0", "acc2_has0", "f1_has0", "acc7", "acc5", "mae", "corr"),
    "emotion": ("acc", "f1_weighted", "acc_avg", "f1_avg"),
    "depression": ("mae", "rmse", "corr", "precision", "recall", "f1"),
}


def metric_fn(
    data_kind: str, class_names: Sequence[str] | None = None
) -> Callable[[np.ndarray, np.ndarray], Metrics]:
    if data_kind == "sentiment":
        return sentiment_metrics
    if data_kind == "emotion":
        return lambda p, y: emotion_metrics(p, y, class_names)
    if data_kind == "depression":
        return depression_metrics
    raise ValueError(f"unknown task kind {data_kind!r}; expected sentiment, emotion or depression")
