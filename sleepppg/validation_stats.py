"""Agreement between predicted and scored hypnograms, after the standardized framework of Menghini et al.
(SLEEP 2021, doi:10.1093/sleep/zsaa170), computed by yasa: epoch-by-epoch agreement
(`yasa.EpochByEpochAgreement`), sleep statistics (`yasa.Hypnogram.sleep_statistics`), and Bland-Altman bias,
limits of agreement and assumption tests (`yasa.SleepStatsAgreement`). Also the calibration of the stage
probabilities (reliability curves by scikit-learn, expected calibration error) and subgroup summaries.

Differences are always predicted - scored (device - reference). Only epochs both staged and scored are used;
for sleep statistics each night's two hypnograms span the same epochs, from the first to the last compared
epoch, with the other epochs inside that span unscored ("UNS") in both (they keep their place in time).

yasa 0.7 (Python 3.10) and 0.8 (Python >= 3.11) differ: 0.8 states accuracy, precision, recall and F1 in
percent, names parametric results "param" (0.7: "parm", "bias_parm", "lloa_parm", "uloa_parm") and keeps the
assumption tests' p-values in `assumptions`; this module returns the same fractions and columns for both.
yasa is imported only when a function here runs.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from typing import Sequence

import numpy as np

from sleepppg.constants import STAGE_NAMES
from sleepppg.report import (
    SLEEP_STATISTICS,
    YASA_STAGES,
    hypnogram_statistics,
    same_epochs,
    yasa_hypnogram,
    yasa_module,
)
from sleepppg.validation import POOLED, Night

SCORED, PREDICTED = "scored", "predicted"  # yasa scorer names: reference, observed
# TIB is the same for both hypnograms by construction (same epochs): nothing to compare
AGREEMENT_STATISTICS = tuple(s for s in SLEEP_STATISTICS if s != "TIB")
MIN_NIGHTS = 3  # fewest nights for the framework's tests (Shapiro-Wilk, regression with n - 2 dof)
BOOTSTRAP_SEED = 0  # bootstrap CIs (non-normal differences) are reproducible from run to run
BOOTSTRAP_RESAMPLES = 1000  # yasa's and Menghini et al.'s default (BCa); about 3 s per non-normal statistic
CALIBRATION_BINS = 10  # equal-width probability bins of the reliability diagram and the ECE
# bands of the NSRR covariates; other numeric covariates are split at their quartiles, text ones by value
COVARIATE_BANDS = {
    "nsrr_ahi_hp3r_aasm15": ((0, 5, 15, 30, math.inf),  # events/h: AASM OSA severity
                             ("<5 (none)", "5-15 (mild)", "15-30 (moderate)", ">=30 (severe)")),
    "nsrr_age": ((-math.inf, 50, 60, 70, 80, math.inf), ("<50", "50-59", "60-69", "70-79", ">=80")),  # years
    "nsrr_bmi": ((-math.inf, 18.5, 25, 30, math.inf),  # kg/m2: WHO classes
                 ("<18.5 (underweight)", "18.5-25 (normal)", "25-30 (overweight)", ">=30 (obese)")),
}
MISSING_GROUP = "(missing)"

log = logging.getLogger(__name__)


def compared_stages(night: Night) -> tuple[np.ndarray, np.ndarray]:
    """(scored, predicted) stages of the epochs both staged and scored, in time order."""
    keep = night.compared_E
    return night.true_E[keep], night.pred_E[keep]


def timeline_stages(night: Night) -> tuple[np.ndarray, np.ndarray]:
    """(scored, predicted) stages from the first to the last compared epoch, -1 in both where either has none."""
    return same_epochs(night.true_E, night.pred_E)


def _agreement(yasa, percent: bool, pairs: dict[str, tuple[np.ndarray, np.ndarray]]):
    """yasa's epoch-by-epoch agreement of each (scored, predicted) pair: accuracy, kappa, MCC and per-stage
    sensitivity, precision, F1 as fractions; NaN where undefined (a stage neither scored nor predicted has no
    F1; one never scored no sensitivity; one never predicted no precision)."""
    import pandas as pd

    ebe = yasa.EpochByEpochAgreement({k: yasa_hypnogram(yasa, t, SCORED) for k, (t, _) in pairs.items()},
                                     {k: yasa_hypnogram(yasa, p, PREDICTED) for k, (_, p) in pairs.items()})
    scale = 100.0 if percent else 1.0
    with warnings.catch_warnings():  # sklearn on a night without some stage; such values are made NaN below
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        overall = ebe.get_agreement()
        bystage = ebe.get_agreement_bystage()
    if len(pairs) == 1:  # yasa drops the session level for a single session
        overall = overall.to_frame(next(iter(pairs))).T
        bystage = pd.concat({next(iter(pairs)): bystage}, names=["sleep_id"]).swaplevel()
    table = pd.DataFrame(index=pd.Index(list(pairs), name="night"))
    table["n_epochs"] = [t.size for t, _ in pairs.values()]
    table["accuracy"] = overall["accuracy"] / scale
    table["kappa"], table["mcc"] = overall["kappa"], overall["mcc"]
    for stage, (name, label) in enumerate(zip(STAGE_NAMES, YASA_STAGES)):
        rows = bystage.xs(label, level=0) if label in bystage.index.get_level_values(0) else pd.DataFrame()
        n_scored = pd.Series({k: int((t == stage).sum()) for k, (t, _) in pairs.items()})
        n_predicted = pd.Series({k: int((p == stage).sum()) for k, (_, p) in pairs.items()})
        for column, metric, defined in (("sensitivity", "recall", n_scored > 0),
                                        ("precision", "precision", n_predicted > 0),
                                        ("f1", "fbeta", (n_scored > 0) | (n_predicted > 0))):
            values = rows[metric].reindex(table.index).astype(float) / scale if len(rows) else np.nan
            table[f"{column}_{name}"] = pd.Series(values, index=table.index).where(defined)
    return table


def epoch_agreement(nights: Sequence[Night]):
    """One row per night and a last row `pooled` (every compared epoch of every night): n_epochs, accuracy,
    kappa, mcc, sensitivity_/precision_/f1_<stage> (yasa.EpochByEpochAgreement)."""
    import pandas as pd

    yasa, percent = yasa_module()
    pairs = {n.night_id: compared_stages(n) for n in nights}
    pooled = {POOLED: tuple(np.concatenate(arrays) for arrays in zip(*pairs.values()))}
    return pd.concat([_agreement(yasa, percent, pairs), _agreement(yasa, percent, pooled)])


def pooled_kappa(nights: Sequence[Night]) -> float:
    """Cohen's kappa over every compared epoch of `nights` together (yasa)."""
    yasa, percent = yasa_module()
    scored, predicted = (np.concatenate(a) for a in zip(*(compared_stages(n) for n in nights)))
    return float(_agreement(yasa, percent, {POOLED: (scored, predicted)})["kappa"].iloc[0])


def sleep_statistics(nights: Sequence[Night]):
    """yasa's sleep statistics (SLEEP_STATISTICS, minutes / %) of each night's scored and predicted timeline.

    Returns:
        (scored, predicted): two DataFrames indexed by night, columns SLEEP_STATISTICS (NaN where yasa has
        none, e.g. Lat_REM of a night without REM).
    """
    import pandas as pd

    frames = {SCORED: {}, PREDICTED: {}}
    for night in nights:
        for scorer, stages in zip((SCORED, PREDICTED), timeline_stages(night)):
            frames[scorer][night.night_id] = hypnogram_statistics(stages, scorer)
    return tuple(pd.DataFrame.from_dict(frames[s], orient="index").reindex(columns=list(SLEEP_STATISTICS))
                 .rename_axis("night").astype(float) for s in (SCORED, PREDICTED))


def _bootstrap_kwargs(n_resamples: int) -> dict:
    """A seeded bootstrap for yasa (scipy >= 1.15 names the generator `rng`, older ones `random_state`)."""
    from scipy.stats import bootstrap

    key = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    return {"n_resamples": n_resamples, key: np.random.default_rng(BOOTSTRAP_SEED)}


def _framework_row(yasa, v08: bool, statistic: str, scored, predicted, n_resamples: int) -> dict:
    """yasa.SleepStatsAgreement on one statistic: bias, LoA and their CIs by the method the framework picks
    ("auto"), the regression lines and the assumption tests.

    With yasa 0.7 the heteroscedasticity test is left out (NaN; LoA stay parametric): 0.7.0 regresses
    |predicted - fitted bias| instead of the residuals of the bias regression on the scored value (fixed in 0.8),
    so it finds heteroscedasticity almost everywhere. 0.7 keeps no normality p-value.
    """
    ssa = yasa.SleepStatsAgreement(scored.to_frame(statistic), predicted.to_frame(statistic), ref_scorer=SCORED,
                                   obs_scorer=PREDICTED, bootstrap_kwargs=_bootstrap_kwargs(n_resamples))
    note = ""
    try:
        summary = ssa.summary(ci_method="auto").loc[statistic]
    except ValueError as err:  # yasa 0.7's bootstrap fails on a resample whose scored values are all equal
        note = f"bootstrap failed ({err}): parametric CIs"
        log.warning("%s: %s", statistic, note)
        summary = ssa.summary(ci_method="param" if v08 else "parm").loc[statistic]
    if v08:
        tests = ssa.assumptions.loc[statistic]
        names = {"bias": "bias_mean", "loa_lower": "loa_lower", "loa_upper": "loa_upper"}
        row = {"ci_method": tests[("normal", "method")], "normality_p": tests[("normal", "pvalue")],
               "normal": tests[("normal", "passed")], "proportional_bias_p": tests[("constant_bias", "pvalue")],
               "proportional_bias": not tests[("constant_bias", "passed")],
               "bias_method": tests[("constant_bias", "method")],
               "heteroscedasticity_slope": summary[("loa_slope", "center")],
               "heteroscedasticity_intercept": summary[("loa_intercept", "center")],
               "heteroscedasticity_p": tests[("homoscedastic", "pvalue")],
               "heteroscedastic": not tests[("homoscedastic", "passed")],
               "loa_method": tests[("homoscedastic", "method")], "loa_halfwidth": summary[("loa_halfwidth", "center")]}
    else:
        tests, methods = ssa.assumptions.loc[statistic], ssa.auto_methods.loc[statistic]
        names = {"bias": "bias_parm", "loa_lower": "lloa_parm", "loa_upper": "uloa_parm"}
        row = {"ci_method": {"parm": "param"}.get(methods["ci"], methods["ci"]), "normality_p": np.nan,
               "normal": tests["normal"], "proportional_bias_p": ssa._regr.loc[("bias", statistic), "pvalue"],  # 0.7
               "proportional_bias": not tests["constant_bias"],  # keeps the p-values only in _regr
               "bias_method": {"parm": "param"}.get(methods["bias"], methods["bias"]), "loa_method": "param"}
    for key, name in names.items():
        row[key] = summary[(name, "center")]
        row[f"{key}_ci_lower"], row[f"{key}_ci_upper"] = summary[(name, "lower")], summary[(name, "upper")]
    row.update(proportional_bias_slope=summary[("bias_slope", "center")],
               proportional_bias_intercept=summary[("bias_intercept", "center")])
    if note:
        row.update(ci_method="param", note=note)
    return row


BLAND_ALTMAN_COLUMNS = (
    "statistic", "n", "mean_scored", "mean_predicted", "bias", "bias_ci_lower", "bias_ci_upper",
    "loa_lower", "loa_lower_ci_lower", "loa_lower_ci_upper", "loa_upper", "loa_upper_ci_lower", "loa_upper_ci_upper",
    "ci_method", "normality_p", "normal", "proportional_bias_slope", "proportional_bias_intercept",
    "proportional_bias_p", "proportional_bias", "heteroscedasticity_slope", "heteroscedasticity_intercept",
    "heteroscedasticity_p", "heteroscedastic", "bias_method", "loa_method", "loa_halfwidth", "note")


def bland_altman(scored, predicted, n_resamples: int = BOOTSTRAP_RESAMPLES):
    """The framework's Bland-Altman analysis of each statistic of AGREEMENT_STATISTICS (yasa.SleepStatsAgreement
    on the nights where both values exist; bias = mean of predicted - scored, LoA = bias -/+ 1.96 SD).

    Args:
        scored, predicted: the two frames of `sleep_statistics`.
        n_resamples: bootstrap resamples of the CIs of a statistic whose differences are not normal.
    Returns:
        DataFrame, one row per statistic, columns BLAND_ALTMAN_COLUMNS; a statistic with fewer than MIN_NIGHTS
        nights, or the same value in both everywhere, has a `note` instead of tests.
    """
    import pandas as pd

    yasa, v08 = yasa_module()
    rows = []
    for statistic in AGREEMENT_STATISTICS:
        both = scored[statistic].notna() & predicted[statistic].notna()
        ref, obs = scored.loc[both, statistic], predicted.loc[both, statistic]
        row = {"statistic": statistic, "n": int(both.sum()), "mean_scored": ref.mean(), "mean_predicted": obs.mean()}
        if row["n"] < MIN_NIGHTS:
            row["note"] = f"fewer than {MIN_NIGHTS} nights with this statistic"
        elif (ref == obs).all():
            row.update(bias=0.0, loa_lower=0.0, loa_upper=0.0, note="the same in every night")
        else:
            row.update(_framework_row(yasa, v08, statistic, ref, obs, n_resamples))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(BLAND_ALTMAN_COLUMNS))


def calibration(nights: Sequence[Night], n_bins: int = CALIBRATION_BINS):
    """Reliability of the stage probabilities over the compared epochs: for each stage (one vs rest, p_<stage>)
    and for the predicted stage ("top label", its probability vs being right), equal-width bins with their
    epoch count, mean probability and observed frequency (sklearn.calibration.calibration_curve), and the
    expected calibration error ECE = sum over bins of (n_bin / n) x |observed - mean probability|.

    Returns:
        (curves DataFrame: target, bin, n, mean_probability, observed_frequency; {target: ECE})
    """
    import pandas as pd
    from sklearn.calibration import calibration_curve

    probs_EC = np.concatenate([n.probs_EC[n.compared_E] for n in nights])
    true_E = np.concatenate([n.true_E[n.compared_E] for n in nights])
    targets = {name: (true_E == k, probs_EC[:, k]) for k, name in enumerate(STAGE_NAMES)}
    targets["top label"] = (probs_EC.argmax(axis=1) == true_E, probs_EC.max(axis=1))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows, ece = [], {}
    for target, (hit_E, p_E) in targets.items():
        bin_E = np.searchsorted(edges[1:-1], p_E)  # the binning of calibration_curve(strategy="uniform")
        counts = np.bincount(bin_E, minlength=n_bins)
        observed, mean_p = calibration_curve(hit_E, p_E, n_bins=n_bins, strategy="uniform")
        filled = np.flatnonzero(counts)
        ece[target] = float(np.sum(counts[filled] / counts.sum() * np.abs(observed - mean_p)))
        rows += [{"target": target, "bin": int(b), "bin_lower": edges[b], "bin_upper": edges[b + 1],
                  "n": int(counts[b]), "mean_probability": m, "observed_frequency": o}
                 for b, m, o in zip(filled, mean_p, observed, strict=True)]
    return pd.DataFrame(rows), ece


def covariate_groups(values, covariate: str):
    """The group of each subject for one covariate, as an ordered categorical: COVARIATE_BANDS for the NSRR
    names, quartiles for other numbers with more than 4 values, the value itself otherwise; MISSING_GROUP
    (last) where there is no value."""
    import pandas as pd

    numeric = pd.api.types.is_numeric_dtype(values)
    if covariate in COVARIATE_BANDS and numeric:
        edges, labels = COVARIATE_BANDS[covariate]
        groups = pd.cut(values, bins=list(edges), labels=list(labels), right=False)
    elif numeric and values.nunique() > 4:
        groups = pd.qcut(values, q=4, duplicates="drop")
        groups = groups.cat.rename_categories([str(c) for c in groups.cat.categories])
    else:
        order = sorted(values.dropna().unique())
        groups = values.map({v: str(v) for v in order}).astype(pd.CategoricalDtype([str(v) for v in order]))
    return groups.cat.add_categories([MISSING_GROUP]).fillna(MISSING_GROUP)


SUBGROUP_COLUMNS = ("covariate", "group", "n", "median_kappa", "iqr_kappa", "pooled_kappa", "tst_bias")


def subgroups(nights: Sequence[Night], kappa, tst_difference, covariates):
    """One row per covariate group: nights, median and interquartile range of per-night kappa, kappa of the
    group's epochs pooled, and the mean TST difference (predicted - scored, min), the group's Bland-Altman bias.

    Args:
        kappa, tst_difference: Series indexed by night ID.
        covariates: DataFrame indexed by night ID, one column per covariate (NaN where unknown).
    """
    import pandas as pd

    by_id = {n.night_id: n for n in nights}
    rows = []
    for covariate in covariates.columns:
        groups = covariate_groups(covariates[covariate], covariate)
        for group, members in groups.groupby(groups, observed=True, sort=True).groups.items():
            k = kappa.reindex(members).dropna()
            q1, q3 = np.percentile(k, [25, 75]) if len(k) else (np.nan, np.nan)
            rows.append({"covariate": covariate, "group": group, "n": len(members),
                         "median_kappa": float(np.median(k)) if len(k) else np.nan, "iqr_kappa": q3 - q1,
                         "pooled_kappa": pooled_kappa([by_id[m] for m in members]),
                         "tst_bias": float(tst_difference.reindex(members).mean())})
    return pd.DataFrame(rows).reindex(columns=list(SUBGROUP_COLUMNS))
