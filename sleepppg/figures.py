"""Figures: hypnograms (predicted, or scored vs predicted with mistakes marked) and confusion matrices,
drawn with matplotlib's object API on the Agg canvas (no pyplot state), so a writer thread can draw them.
"""

from __future__ import annotations

import os

import numpy as np

from sleepppg.config import MISTAKE_COLOR
from sleepppg.constants import (
    HYPNOGRAM_LEVEL,
    IGNORE_INDEX,
    N_CLASSES,
    REM_CLASS,
    STAGE_NAMES,
    WINDOW_SECONDS,
)
from sleepppg.metrics import accuracy_kappa_from_confusion
from sleepppg.runio import atomic_output

FIGURE_DPI = 110  # enough to read 1,200 epochs on a 12-inch-wide figure; higher only slows saving


def _hypnogram_levels(stages_W: np.ndarray) -> np.ndarray:
    """Plot level of each epoch (HYPNOGRAM_LEVEL), NaN where there is no stage (-1)."""
    lookup = np.full(N_CLASSES + 1, np.nan)  # the extra last slot (NaN) serves -1 and anything out of range
    for stage, level in HYPNOGRAM_LEVEL.items():
        lookup[stage] = level
    stages_W = np.asarray(stages_W, dtype=np.int64).reshape(-1)
    return lookup[np.where((stages_W >= 0) & (stages_W < N_CLASSES), stages_W, N_CLASSES)]


def _draw_hypnogram(ax, stages_W: np.ndarray, epoch_s: float, label: str) -> None:
    """A post-step hypnogram line on `ax` (black; REM epochs over it as a thick red line)."""
    levels = _hypnogram_levels(stages_W)
    x = np.arange(levels.size + 1) * epoch_s / 3600  # epoch edges, hours
    y = np.append(levels, levels[-1] if levels.size else np.nan)
    ax.step(x, y, where="post", color="black", linewidth=1.0, label=label)
    rem_y = np.where(y == HYPNOGRAM_LEVEL[REM_CLASS], y, np.nan)
    ax.step(x, rem_y, where="post", color="tab:red", linewidth=3.0, label="REM")
    order = sorted(HYPNOGRAM_LEVEL, key=HYPNOGRAM_LEVEL.get)
    ax.set_yticks([HYPNOGRAM_LEVEL[c] for c in order], [STAGE_NAMES[c] for c in order])
    ax.set_ylim(-0.5, 3.5)
    ax.set_xlim(0, max(x[-1], epoch_s / 3600))
    ax.grid(alpha=0.3, linestyle="--")


def hypnogram_figure(pred_W: np.ndarray, title: str, true_W: np.ndarray | None = None,
                     epoch_s: float = WINDOW_SECONDS):
    """A hypnogram figure: the predicted stages alone, or with `true_W` the scored hypnogram (top) above the
    predicted one (bottom) with each disagreeing epoch shaded orange on the predicted panel (REM is the red
    line; unscored epochs, -1, are gaps and never count as mistakes). Time runs from the recording start.

    Args:
        pred_W: predicted stage per epoch (0 Wake, 1 Light, 2 Deep, 3 REM).
        title: the figure title (put accuracy/kappa here when known).
        true_W: scored stage per epoch (same length, -1 = no stage), or None.
        epoch_s: epoch length in seconds.
    Returns:
        a matplotlib Figure (save it with `save_figure`, or give it to TensorBoard's add_figure).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    pred_W = np.asarray(pred_W, dtype=np.int64).reshape(-1)
    if true_W is None:
        fig = Figure(figsize=(12, 3))
        ax = fig.subplots()
        _draw_hypnogram(ax, pred_W, epoch_s, "predicted")
        ax.set_title(title)
        ax.legend(loc="upper right", fontsize=8, ncols=2)
    else:
        true_W = np.asarray(true_W, dtype=np.int64).reshape(-1)
        if true_W.shape != pred_W.shape:
            raise ValueError(f"scored ({true_W.size}) and predicted ({pred_W.size}) hypnograms differ in length")
        fig = Figure(figsize=(12, 5.2))
        ax_true, ax = fig.subplots(2, 1, sharex=True)
        _draw_hypnogram(ax_true, true_W, epoch_s, "scored")
        ax_true.set_ylabel("Scored")
        ax_true.set_title(title)
        ax_true.legend(loc="upper right", fontsize=8, ncols=2)
        _draw_hypnogram(ax, pred_W, epoch_s, "predicted")
        ax.set_ylabel("Predicted")
        wrong_W = (true_W != IGNORE_INDEX) & (true_W != pred_W)
        edges = np.arange(pred_W.size + 1) * epoch_s / 3600
        ax.fill_between(edges, -0.5, 3.5, where=np.append(wrong_W, False), step="post", color=MISTAKE_COLOR,
                        alpha=0.5, linewidth=0, zorder=0)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Patch(color=MISTAKE_COLOR, alpha=0.5))
        labels.append(f"disagrees with the scored stage ({int(wrong_W.sum())} epochs)")
        ax.legend(handles, labels, loc="upper right", fontsize=8, ncols=3)
    ax.set_xlabel("Time from recording start (h)")
    fig.tight_layout()
    return fig


def confusion_figure(cm_CC: np.ndarray, title: str):
    """A confusion matrix figure: rows = scored stage, columns = predicted; each cell shows its count and its
    share of the row (the scored stage's epochs); the colour is that row share (row-normalised, so rare stages
    read as clearly as common ones; the colour bar says so). Accuracy and Cohen's kappa, computed from the
    matrix itself, are in the title.

    Args:
        cm_CC: 4x4 counts (rows true, columns predicted), e.g. compute_metrics(...)["confusion_matrix"].
        title: the first title line (e.g. "Validation, epoch 12").
    Returns:
        a matplotlib Figure.
    """
    from matplotlib.figure import Figure

    cm_CC = np.asarray(cm_CC, dtype=np.int64)
    if cm_CC.shape != (N_CLASSES, N_CLASSES):
        raise ValueError(f"confusion matrix must be {N_CLASSES}x{N_CLASSES}, got {cm_CC.shape}")
    accuracy, kappa = accuracy_kappa_from_confusion(cm_CC)
    row_sums = cm_CC.sum(axis=1, keepdims=True)
    share_CC = np.divide(cm_CC, row_sums, out=np.zeros(cm_CC.shape), where=row_sums > 0)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    image = ax.imshow(share_CC, cmap="Blues", vmin=0.0, vmax=1.0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the scored stage's epochs (row-normalised)")
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            ax.text(j, i, f"{cm_CC[i, j]:d}\n{100 * share_CC[i, j]:.1f}%", ha="center", va="center", fontsize=9,
                    color="white" if share_CC[i, j] > 0.6 else "black")
    ax.set_xticks(range(N_CLASSES), STAGE_NAMES)
    ax.set_yticks(range(N_CLASSES), STAGE_NAMES)
    ax.set_xlabel("Predicted stage")
    ax.set_ylabel("Scored stage")
    fmt = lambda v, spec: "undefined" if v is None else format(v, spec)  # noqa: E731
    ax.set_title(f"{title}\nkappa {fmt(kappa, '.3f')}, accuracy {fmt(accuracy, '.1%')} "
                 f"({int(cm_CC.sum())} epochs; cell: count, % of row)", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = FIGURE_DPI) -> None:
    """Save `fig` as a PNG at `path`, atomically (never a half-written image under the final name)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
