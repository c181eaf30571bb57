"""Figures of the validation report (matplotlib object API on the Agg canvas, no pyplot state): a Bland-Altman
plot per sleep statistic, the distribution of per-night kappa, kappa against each covariate, and reliability
diagrams of the stage probabilities. The confusion matrix and hypnograms are sleepppg.figures'.
"""

from __future__ import annotations

import math

import numpy as np

from sleepppg.constants import STAGE_NAMES

LOA_REGRESSION_FACTOR = 1.96 * math.sqrt(math.pi / 2)  # |residual| -> SD: E|e| = SD x sqrt(2/pi) (Menghini 2021)
JITTER_SEED = 0  # horizontal spread of the points of a categorical covariate, the same on every run


def statistic_unit(statistic: str) -> str:
    """yasa's unit of a sleep statistic: % for SE, SME and %<stage>, minutes otherwise."""
    return "%" if statistic.startswith("%") or statistic in ("SE", "SME") else "min"


def bland_altman_figure(scored: np.ndarray, predicted: np.ndarray, row: dict, statistic: str):
    """Bland-Altman plot of one statistic: predicted - scored against the scored value (the reference, as the
    framework regresses on it), the bias and the limits of agreement (bias -/+ 1.96 SD) with their CI bands,
    and, where the framework picks it, the regression line of a proportional bias and regression-based limits.

    Args:
        scored, predicted: the statistic per night (same length).
        row: this statistic's row of sleepppg.validation_stats.bland_altman.
    """
    from matplotlib.figure import Figure

    scored, predicted = np.asarray(scored, float), np.asarray(predicted, float)
    diff = predicted - scored
    unit = statistic_unit(statistic)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ax.scatter(scored, diff, s=22, color="tab:blue", alpha=0.8, label=f"nights (n = {diff.size})", zorder=3)
    ax.axhline(0, color="black", linewidth=0.6)
    for key, color, text in (("bias", "tab:red", "bias"), ("loa_lower", "tab:gray", "limits of agreement"),
                             ("loa_upper", "tab:gray", None)):
        value = row.get(key)
        if value is None or not np.isfinite(value):
            continue
        ax.axhline(value, color=color, linestyle="--", linewidth=1.2,
                   label=None if text is None else f"{text}{'' if key == 'bias' else ' (bias -/+ 1.96 SD)'}")
        low, high = row.get(f"{key}_ci_lower"), row.get(f"{key}_ci_upper")
        if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
            ax.axhspan(low, high, color=color, alpha=0.15, linewidth=0,
                       label=f"95% CI ({row.get('ci_method', 'param')})" if key == "bias" else None)
    x = np.linspace(np.nanmin(scored), np.nanmax(scored), 50) if scored.size else np.zeros(0)
    if row.get("bias_method") == "regr":
        line = row["proportional_bias_intercept"] + row["proportional_bias_slope"] * x
        ax.plot(x, line, color="tab:red", linewidth=1.8,
                label=f"proportional bias: {row['proportional_bias_intercept']:.2f} "
                      f"{row['proportional_bias_slope']:+.3f} x scored (p = {row['proportional_bias_p']:.3g})")
    else:
        line = np.full_like(x, row.get("bias", np.nan))
    if row.get("loa_method") == "regr":
        half = LOA_REGRESSION_FACTOR * (row["heteroscedasticity_intercept"] + row["heteroscedasticity_slope"] * x)
        ax.plot(x, line - half, color="tab:purple", linewidth=1.4,
                label=f"regression limits (heteroscedastic, p = {row['heteroscedasticity_p']:.3g})")
        ax.plot(x, line + half, color="tab:purple", linewidth=1.4)
    elif row.get("bias_method") == "regr" and np.isfinite(row.get("loa_halfwidth", np.nan)):
        ax.plot(x, line - row["loa_halfwidth"], color="tab:purple", linewidth=1.4,
                label="limits around the bias line (1.96 SD of its residuals)")
        ax.plot(x, line + row["loa_halfwidth"], color="tab:purple", linewidth=1.4)
    ax.set_xlabel(f"{statistic}, scored ({unit})")
    ax.set_ylabel(f"{statistic}: predicted - scored ({unit})")
    bias = row.get("bias")
    ax.set_title(f"{statistic}: bias {bias:+.2f} {unit}" if bias is not None and np.isfinite(bias) else statistic)
    ax.grid(alpha=0.3, linestyle="--")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def kappa_distribution_figure(kappa):
    """Histogram of per-night Cohen's kappa with each night as a tick below it and the median marked."""
    from matplotlib.figure import Figure

    values = np.asarray(kappa, float)
    values = values[np.isfinite(values)]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.hist(values, bins=np.linspace(-0.2, 1.0, 25), color="tab:blue", alpha=0.7, edgecolor="white")
    ax.plot(values, np.full(values.size, -0.3), "|", color="black", markersize=12)
    if values.size:
        median = float(np.median(values))
        ax.axvline(median, color="tab:red", linestyle="--", label=f"median {median:.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("Cohen's kappa of the night (compared epochs)")
    ax.set_ylabel("nights")
    ax.set_title(f"Per-night kappa ({values.size} nights)")
    ax.grid(alpha=0.3, linestyle="--")
    fig.tight_layout()
    return fig


def kappa_covariates_figure(kappa, covariates):
    """Per-subject kappa against each covariate (a panel each): a scatter for a number, points per value for
    text (spread sideways); subjects without a value are left out of that panel and counted in its title.

    Args:
        kappa: Series indexed by night ID.
        covariates: DataFrame indexed by night ID, one column per covariate.
    """
    import pandas as pd
    from matplotlib.figure import Figure

    columns = list(covariates.columns)
    fig = Figure(figsize=(4.5 * max(len(columns), 1), 4))
    axes = np.atleast_1d(fig.subplots(1, max(len(columns), 1), sharey=True))
    rng = np.random.default_rng(JITTER_SEED)
    for ax, column in zip(axes, columns):
        values = covariates[column].reindex(kappa.index)
        known = values.notna() & kappa.notna()
        if pd.api.types.is_numeric_dtype(values):
            ax.scatter(values[known], kappa[known], s=20, alpha=0.8)
        else:
            order = sorted(values[known].astype(str).unique())
            position = values[known].astype(str).map({v: i for i, v in enumerate(order)}).to_numpy(float)
            ax.scatter(position + rng.uniform(-0.15, 0.15, position.size), kappa[known], s=20, alpha=0.8)
            ax.set_xticks(range(len(order)), order)
        ax.set_xlabel(column)
        ax.set_title(f"{column} ({int((~known).sum())} without a value)", fontsize=9)
        ax.grid(alpha=0.3, linestyle="--")
    axes[0].set_ylabel("Cohen's kappa of the night")
    fig.tight_layout()
    return fig


def reliability_figure(curves, ece: dict):
    """A reliability diagram per stage (p_<stage> against how often the stage was scored) and for the predicted
    stage (its probability against being right), each with its ECE; the marker area follows the bin's epochs.

    Args:
        curves, ece: the outputs of sleepppg.validation_stats.calibration.
    """
    from matplotlib.figure import Figure

    targets = [*STAGE_NAMES, "top label"]
    fig = Figure(figsize=(4 * len(targets), 4.2))
    axes = fig.subplots(1, len(targets), sharey=True)
    for ax, target in zip(axes, targets):
        part = curves[curves["target"] == target]
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect calibration")
        sizes = 10 + 200 * part["n"] / max(part["n"].max(), 1) if len(part) else 10
        ax.plot(part["mean_probability"], part["observed_frequency"], color="tab:blue", linewidth=1)
        ax.scatter(part["mean_probability"], part["observed_frequency"], s=sizes, color="tab:blue", zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability" if target != "top label" else "probability of the predicted stage")
        ax.set_title(f"{target}: ECE {ece.get(target, float('nan')):.3f}", fontsize=10)
        ax.grid(alpha=0.3, linestyle="--")
    axes[0].set_ylabel("observed frequency (scored)")
    axes[-1].set_ylabel("share predicted right")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
