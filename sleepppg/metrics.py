"""Sleep-staging metrics with the paper's definitions (Kotzen et al., IEEE JBHI 2023): pooled accuracy,
Cohen's kappa, weighted F1, per-class report and confusion matrix over scored epochs, and per-subject kappa.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sleepppg.constants import IGNORE_INDEX, N_CLASSES, STAGE_NAMES


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, subject_ids: np.ndarray | None = None) -> dict:
    """Sleep-staging metrics over scored epochs (labels != -1).

    Args:
        y_true: true 4-class labels, any shape; -1 entries are ignored.
        y_pred: predicted labels, same shape.
        subject_ids: subject of each entry, same shape; enables per-subject kappa.
    Returns:
        dict with `n_epochs`, `accuracy`, `kappa` (pooled Cohen's kappa), `f1_weighted`,
        `classification_report` (scikit-learn's dict), `confusion_matrix` (4x4 list, rows = true),
        and when `subject_ids` is given `per_subject_kappa` ({id: kappa}) and `per_subject_kappa_stats`
        (n, min, max, mean, std, median, q1, q3; subjects whose kappa is undefined - a single class in both
        truth and prediction - are listed in `undefined_kappa_subjects` and left out of the statistics).
    """
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        f1_score,
    )

    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} entries but y_pred has {y_pred.size}")
    mask = y_true != IGNORE_INDEX
    t, p = y_true[mask], y_pred[mask]
    labels = list(range(N_CLASSES))
    out: dict[str, Any] = {"n_epochs": int(mask.sum())}
    if t.size == 0:
        raise ValueError("no scored epochs (every label is -1): nothing to evaluate")
    out["accuracy"] = float(accuracy_score(t, p))
    out["kappa"] = _kappa(t, p)
    out["f1_weighted"] = float(f1_score(t, p, labels=labels, average="weighted", zero_division=0))
    out["classification_report"] = classification_report(
        t, p, labels=labels, target_names=list(STAGE_NAMES), output_dict=True, zero_division=0)
    out["confusion_matrix"] = confusion_matrix(t, p, labels=labels).tolist()
    if subject_ids is not None:
        sids = np.asarray(subject_ids).reshape(-1)
        if sids.shape != y_true.shape:
            raise ValueError("subject_ids must have one entry per label")
        sids = sids[mask]
        per_subject, undefined = {}, []
        for sid in sorted(set(sids.tolist())):
            sel = sids == sid
            k = _kappa(t[sel], p[sel])
            if math.isnan(k):
                undefined.append(_as_str(sid))
            else:
                per_subject[_as_str(sid)] = k
        out["per_subject_kappa"] = per_subject
        out["undefined_kappa_subjects"] = undefined
        out["per_subject_kappa_stats"] = summary_stats(list(per_subject.values()))
    return out


def _kappa(t: np.ndarray, p: np.ndarray) -> float:
    """Cohen's kappa; NaN when undefined (truth and prediction a single identical class)."""
    from sklearn.metrics import cohen_kappa_score

    if t.size == 0:
        return float("nan")
    if np.unique(np.concatenate([t, p])).size == 1:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(cohen_kappa_score(t, p, labels=list(range(N_CLASSES))))


def _as_str(sid: Any) -> str:
    return sid.decode() if isinstance(sid, bytes) else str(sid)


def summary_stats(values: list[float]) -> dict:
    """n, min, max, mean, std, median and quartiles of a list (NaN-free); all NaN when empty."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {k: float("nan") for k in ("min", "max", "mean", "std", "median", "q1", "q3")} | {"n": 0}
    return {
        "n": int(arr.size), "min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()),
        "std": float(arr.std()), "median": float(np.median(arr)),
        "q1": float(np.percentile(arr, 25)), "q3": float(np.percentile(arr, 75)),
    }


def accuracy_kappa_from_confusion(cm_CC: np.ndarray) -> tuple[float | None, float | None]:
    """(accuracy, Cohen's kappa) of a confusion matrix: p_o = trace / n, p_e = sum(row_i x col_i) / n^2,
    kappa = (p_o - p_e) / (1 - p_e). None where undefined (no epochs; p_e = 1, a single class throughout)."""
    cm_CC = np.asarray(cm_CC, dtype=float)
    n = cm_CC.sum()
    if n == 0:
        return None, None
    p_o = np.trace(cm_CC) / n
    p_e = float(cm_CC.sum(axis=1) @ cm_CC.sum(axis=0)) / n**2
    return float(p_o), (float((p_o - p_e) / (1 - p_e)) if p_e < 1 else None)
