"""The validation study of staged nights (validation_report.py's whole computation, also run by training after
its test and by inference in HDF5 mode): read the night CSVs, compute agreement, sleep statistics, Bland-Altman,
calibration and (with metadata) subgroups through sleepppg.validation_stats, write every table, figure and
report.md. What each output means: validation_report.py's docstring and docs/validation.md.

`validation_report(paths, out_dir, ...)` is the one entry (`report_after_run`: the same for training and
inference, where a failed report is a warning, not a failed run); the `args` of the functions below is a
`ReportOptions` (sources, metadata file, synthetic or not, bootstrap resamples).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sleepppg.cli import log_to_file
from sleepppg.constants import EXIT_FAILED, EXIT_OK, IGNORE_INDEX, STAGE_NAMES
from sleepppg.errors import BadRecordingError, SetupError
from sleepppg.figures import confusion_figure, hypnogram_figure, save_figure
from sleepppg.runio import write_text_atomic
from sleepppg.validation import (
    NSRR_COVARIATES,
    NSRR_ID_COLUMN,
    POOLED,
    Night,
    find_night_csvs,
    match_metadata,
    read_metadata,
    read_night,
    run_checkpoints,
)

FIGURES = "figures"  # sub-folder of --out-dir holding the PNGs
FLOAT_FORMAT = "%.8g"  # CSV numbers: 8 significant digits
REPORT_STATISTICS = ("TST", "SE", "SOL", "WASO", "Lat_REM", "LIGHT", "DEEP", "REM", "%LIGHT", "%DEEP", "%REM")

log = logging.getLogger("sleepppg.validation_study")


def load_nights(csv_paths: Sequence[Path]) -> tuple[list[Night], list[dict]]:
    """Read every night; returns (nights with compared epochs, one status row per CSV: night, path, status
    = compared / no scored epochs / no staged scored epoch / unreadable, reason, epoch counts)."""
    nights, rows = [], []
    for path in csv_paths:
        row = {"night": path.stem, "path": str(path.resolve()), "status": "compared", "reason": ""}
        try:
            night = read_night(path)
        except BadRecordingError as err:
            log.error("night %s could not be read: %s", path.stem, err)
            rows.append({**row, "status": "unreadable", "reason": str(err)})
            continue
        row.update(n_epochs=night.pred_E.size, n_staged=int((night.pred_E != IGNORE_INDEX).sum()),
                   n_scored=int((night.true_E != IGNORE_INDEX).sum()), n_compared=int(night.compared_E.sum()))
        if row["n_scored"] == 0:
            row.update(status="left out", reason="no scored epoch")
        elif row["n_compared"] == 0:
            row.update(status="left out", reason="no epoch both staged and scored")
        else:
            nights.append(night)
        if row["status"] != "compared":
            log.warning("night %s left out: %s", night.night_id, row["reason"])
        rows.append(row)
    return nights, rows


def write_csv(path: Path, frame, index: bool = False) -> None:
    write_text_atomic(path, frame.to_csv(index=index, float_format=FLOAT_FORMAT))


def ba_figure_name(statistic: str) -> str:
    """The Bland-Altman figure's name: bland_altman_TST, bland_altman_pct_REM (no '%' in a file name)."""
    return f"bland_altman_{statistic.replace('%', 'pct_')}"


def example_nights(kappa) -> dict[str, str]:
    """The best, median and worst night by kappa (ties by ID); nights with an undefined kappa are skipped."""
    ranked = sorted((k, n) for n, k in kappa.dropna().items())
    if not ranked:
        return {}
    return {"best": ranked[-1][1], "median": ranked[len(ranked) // 2][1], "worst": ranked[0][1]}


def write_figures(out: Path, nights: list[Night], results: dict, covariates) -> dict[str, str]:
    """Every figure and its CSV; returns {figure name: relative PNG path}."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    from sleepppg import validation_figures as vf
    from sleepppg.validation_stats import compared_stages

    pngs: dict[str, str] = {}

    def save(fig, name: str) -> None:
        save_figure(fig, out / FIGURES / f"{name}.png")
        pngs[name] = f"{FIGURES}/{name}.png"

    scored, predicted = (np.concatenate(a) for a in zip(*(compared_stages(n) for n in nights)))
    cm_CC = confusion_matrix(scored, predicted, labels=range(len(STAGE_NAMES)))
    share = cm_CC / np.maximum(cm_CC.sum(axis=1, keepdims=True), 1)
    table = pd.DataFrame(np.hstack([cm_CC, share]), index=pd.Index(STAGE_NAMES, name="scored"),
                         columns=[f"count_{s}" for s in STAGE_NAMES] + [f"row_share_{s}" for s in STAGE_NAMES])
    write_csv(out / "confusion_matrix.csv", table, index=True)
    save(confusion_figure(cm_CC, f"All {len(nights)} nights, compared epochs (rows: scored, columns: predicted)"),
         "confusion_matrix")

    kappa = results["agreement"]["kappa"].drop(POOLED)
    save(vf.kappa_distribution_figure(kappa), "kappa_distribution")

    sc, pr, ba = results["scored"], results["predicted"], results["bland_altman"]
    points = pd.concat({s: pd.DataFrame({"scored": sc[s], "predicted": pr[s], "difference": pr[s] - sc[s]})
                        for s in ba["statistic"]}, names=["statistic", "night"]).dropna().reset_index()
    write_csv(out / "bland_altman_points.csv", points)
    for row in ba.to_dict("records"):
        part = points[points["statistic"] == row["statistic"]]
        save(vf.bland_altman_figure(part["scored"], part["predicted"], row, row["statistic"]),
             ba_figure_name(row["statistic"]))

    save(vf.reliability_figure(results["calibration"], results["ece"]), "reliability")

    rows = []
    for role, night_id in example_nights(kappa).items():
        night = next(n for n in nights if n.night_id == night_id)
        keep = night.compared_E
        true_W, pred_W = np.where(keep, night.true_E, IGNORE_INDEX), np.where(keep, night.pred_E, IGNORE_INDEX)
        title = f"{role} night {night_id}: kappa {kappa[night_id]:.3f} (scored above, predicted below)"
        save(hypnogram_figure(pred_W, title, true_W=true_W), f"hypnogram_{role}")
        rows.append(pd.DataFrame({"role": role, "night": night_id, "epoch": np.arange(keep.size),
                                  "scored": true_W, "predicted": pred_W}))
    write_csv(out / "hypnograms.csv", pd.concat(rows))

    if covariates is not None:
        write_csv(out / "kappa_by_covariate.csv", covariates.assign(kappa=kappa).rename_axis("night"), index=True)
        save(vf.kappa_covariates_figure(kappa, covariates), "kappa_vs_covariates")
    return pngs


def _fmt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def _inputs_section(args, status_rows: list[dict], checkpoints: list[dict],
                    no_metadata: list[str] | None) -> list[str]:
    from sleepppg.validation_stats import MISSING_GROUP

    by_status = {s: [r for r in status_rows if r["status"] == s] for s in ("compared", "left out", "unreadable")}
    lines = ["## Inputs", "", f"- Sources: {', '.join(str(Path(p).resolve()) for p in args.paths)}"]
    lines += [f"- Checkpoint: {c['path']} (sha256 {c.get('sha256') or 'not recorded'}; run {c['run']})"
              for c in checkpoints] or ["- Checkpoint: not known (no result.json or test_results.json with "
                                        "checkpoint.path beside the CSVs' csv/ folder)"]
    lines.append(f"- Nights compared: {len(by_status['compared'])}; left out: {len(by_status['left out'])}")
    lines += [f"  - {r['night']}: {r['reason']}" for r in by_status["left out"]]
    lines.append(f"- Nights that could not be read: {len(by_status['unreadable'])}")
    lines += [f"  - {r['night']}: {r['reason']}" for r in by_status["unreadable"]]
    lines.append("- Every input and what became of it: [nights.csv](nights.csv)")
    if no_metadata is not None:
        named = f": {', '.join(no_metadata)}" if no_metadata else ""
        lines.append(f"- Metadata: {Path(args.metadata).resolve()}; {len(no_metadata)} subject(s) without metadata"
                     f"{named} (kept, in group {MISSING_GROUP!r})")
    return lines + [""]


def _agreement_section(agreement, pngs: dict) -> list[str]:
    pooled, kappa = agreement.loc[POOLED], agreement["kappa"].drop(POOLED).dropna()
    lines = ["## Epoch by epoch ([epoch_agreement.csv](epoch_agreement.csv))", "",
             (f"Pooled over {int(pooled['n_epochs'])} epochs: accuracy {_fmt(pooled['accuracy'], '.3f')}, "
              f"Cohen's kappa {_fmt(pooled['kappa'], '.3f')}, MCC {_fmt(pooled['mcc'], '.3f')}. Per-night kappa: "
              f"median {_fmt(kappa.median(), '.3f')}, IQR {_fmt(kappa.quantile(0.25), '.3f')} to "
              f"{_fmt(kappa.quantile(0.75), '.3f')} ({len(kappa)} nights)."), "",
             "| pooled | " + " | ".join(STAGE_NAMES) + " |", "|---" * (len(STAGE_NAMES) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(_fmt(pooled[f"{m}_{s}"], ".3f") for s in STAGE_NAMES) + " |"
              for m in ("sensitivity", "precision", "f1")]
    return lines + ["", (f"![confusion matrix]({pngs['confusion_matrix']}) "
                         f"![per-night kappa]({pngs['kappa_distribution']}) "
                         "([confusion_matrix.csv](confusion_matrix.csv))"), ""]


def _statistics_section(ba, pngs: dict) -> list[str]:
    lines = [("## Sleep statistics ([sleep_stats.csv](sleep_stats.csv), [bland_altman.csv](bland_altman.csv), "
              "[bland_altman_points.csv](bland_altman_points.csv))"), "",
             "| statistic | n | scored | predicted | bias [95% CI] | limits of agreement | framework |",
             "|---|---|---|---|---|---|---|"]
    for row in ba[ba["statistic"].isin(REPORT_STATISTICS)].to_dict("records"):
        method = (f"bias {row['bias_method']}, LoA {row['loa_method']}, CI {row['ci_method']}"
                  if isinstance(row["bias_method"], str) else row["note"])
        lines.append(f"| [{row['statistic']}]({pngs.get(ba_figure_name(row['statistic']), '')}) | {row['n']} | "
                     f"{_fmt(row['mean_scored'])} | {_fmt(row['mean_predicted'])} | {_fmt(row['bias'], '+.2f')} "
                     f"[{_fmt(row['bias_ci_lower'])}, {_fmt(row['bias_ci_upper'])}] | {_fmt(row['loa_lower'])} to "
                     f"{_fmt(row['loa_upper'])} | {method} |")
    others = [f"[{s}]({pngs[ba_figure_name(s)]})" for s in ba["statistic"]
              if s not in REPORT_STATISTICS and ba_figure_name(s) in pngs]
    return lines + ["", f"Minutes, except SE, SME and %stage (%). Other Bland-Altman plots: {', '.join(others)}.", ""]


def _subgroups_section(subgroups, pngs: dict) -> list[str]:
    lines = ["## Subgroups ([subgroups.csv](subgroups.csv), [kappa_by_covariate.csv](kappa_by_covariate.csv))", "",
             "| covariate | group | n | median kappa | IQR | pooled kappa | TST bias (min) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['covariate']} | {r['group']} | {r['n']} | {_fmt(r['median_kappa'], '.3f')} | "
              f"{_fmt(r['iqr_kappa'], '.3f')} | {_fmt(r['pooled_kappa'], '.3f')} | {_fmt(r['tst_bias'], '+.1f')} |"
              for r in subgroups.to_dict("records")]
    return lines + ["", f"![kappa against covariates]({pngs['kappa_vs_covariates']})", ""]


def write_report(out: Path, args, status_rows: list[dict], results: dict, pngs: dict,
                 checkpoints: list[dict], no_metadata: list[str] | None) -> None:
    """report.md: one page with the inputs, the headline numbers and a link to every table and figure."""
    import yasa

    n_nights = len(results["agreement"]) - 1
    lines = [f"# Validation report: {n_nights} nights", "",
             (f"Made {dt.datetime.now().isoformat(timespec='seconds')} by sleepppg.validation_study with yasa "
              f"{yasa.__version__}, after Menghini et al., SLEEP 2021. Differences are predicted - scored; only "
              "epochs both staged and scored are compared. Definitions: docs/validation.md."), ""]
    if yasa.__version__.startswith("0.7."):
        lines += [("yasa 0.7 (Python 3.10): heteroscedasticity is not tested (0.7.0's test regresses the wrong "
                   "residuals) and the limits of agreement are the parametric ones; yasa 0.8 (Python >= 3.11) "
                   "tests it."), ""]
    if args.synthetic:
        lines += [("**Synthetic data**: these nights come from the synthetic cohort; the numbers say only that the "
                   "pipeline works, nothing about staging real sleep."), ""]
    lines += _inputs_section(args, status_rows, checkpoints, no_metadata)
    lines += _agreement_section(results["agreement"], pngs)
    lines += _statistics_section(results["bland_altman"], pngs)
    lines += ["## Calibration ([calibration.csv](calibration.csv))", "",
              "Expected calibration error: " + ", ".join(f"{t} {_fmt(e, '.3f')}" for t, e in results["ece"].items())
              + f". ![reliability]({pngs['reliability']})", ""]
    if "subgroups" in results:
        lines += _subgroups_section(results["subgroups"], pngs)
    lines += ["## Hypnograms: best, median and worst night by kappa ([hypnograms.csv](hypnograms.csv))", "",
              *[f"![{k}]({v})" for k, v in pngs.items() if k.startswith("hypnogram_")], ""]
    write_text_atomic(out / "report.md", "\n".join(lines))


def run_report(args, out: Path, csv_paths: list[Path], metadata) -> int:
    """Read the nights, compute, write every output; returns the exit status (1 when a night was unreadable)."""
    import pandas as pd

    from sleepppg import validation_stats as vs

    nights, status_rows = load_nights(csv_paths)
    n_failed = sum(r["status"] == "unreadable" for r in status_rows)
    write_csv(out / "nights.csv", pd.DataFrame(status_rows))
    if not nights:
        if n_failed:
            log.error("no night could be compared (%d unreadable): see %s", n_failed, out / "nights.csv")
            return EXIT_FAILED
        raise SetupError(f"no night has an epoch both staged and scored (inference writes the scored stages in "
                         f"HDF5 mode only): see {out / 'nights.csv'}")
    log.info("%d night(s) compared, %d left out, %d unreadable", len(nights), len(status_rows) - len(nights) - n_failed,
             n_failed)
    results = {"agreement": vs.epoch_agreement(nights)}
    results["scored"], results["predicted"] = vs.sleep_statistics(nights)
    results["bland_altman"] = vs.bland_altman(results["scored"], results["predicted"], n_resamples=args.bootstrap)
    results["calibration"], results["ece"] = vs.calibration(nights)
    write_csv(out / "epoch_agreement.csv", results["agreement"], index=True)
    frames = ((vs.SCORED, results["scored"]), (vs.PREDICTED, results["predicted"]))
    side_by_side = pd.DataFrame({f"{s}_{who}": frame[s] for s in vs.SLEEP_STATISTICS for who, frame in frames})
    write_csv(out / "sleep_stats.csv", side_by_side, index=True)
    write_csv(out / "bland_altman.csv", results["bland_altman"])
    write_csv(out / "calibration.csv", results["calibration"])
    covariates, no_metadata = None, None
    if metadata is not None:
        covariates, no_metadata = match_metadata([n.night_id for n in nights], metadata)
        if no_metadata:
            log.warning("%d subject(s) without metadata (kept, group %r): %s", len(no_metadata), vs.MISSING_GROUP,
                        ", ".join(no_metadata))
        kappa = results["agreement"]["kappa"].drop(POOLED)
        tst_difference = results["predicted"]["TST"] - results["scored"]["TST"]
        results["subgroups"] = vs.subgroups(nights, kappa, tst_difference, covariates)
        write_csv(out / "subgroups.csv", results["subgroups"])
    pngs = write_figures(out, nights, results, covariates)
    write_report(out, args, status_rows, results, pngs, run_checkpoints(csv_paths), no_metadata)
    print(f"{len(nights)} night(s) compared, pooled kappa {results['agreement'].loc[POOLED, 'kappa']:.3f}; "
          f"{n_failed} unreadable. Report: {out / 'report.md'}")
    return EXIT_FAILED if n_failed else EXIT_OK


@dataclasses.dataclass
class ReportOptions:
    """What the report says about its inputs: the sources searched, the metadata file, whether the nights are
    synthetic, and the bootstrap resamples of the CIs (sleepppg.validation_stats)."""

    paths: list[str]
    metadata: str | None = None
    synthetic: bool = False
    bootstrap: int | None = None


def validation_report(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, metadata: str | None = None,
                      id_column: str | None = None, covariates: Sequence[str] = NSRR_COVARIATES,
                      synthetic: bool = False, bootstrap: int | None = None) -> int:
    """Write the validation report of the night CSVs under `paths` into `out_dir` (made if needed; its log in
    validation_report.log).

    Args:
        paths: night CSVs, or folders searched recursively for *.csv (files under out_dir excluded).
        metadata: subject metadata CSV (one row per subject), id_column its ID column (default nsrrid),
            covariates its covariate columns.
        bootstrap: resamples of the bootstrap CIs (default sleepppg.validation_stats.BOOTSTRAP_RESAMPLES).
    Returns:
        0 done, 1 a night could not be read (the others are reported).
    Raises:
        SetupError: yasa missing, no CSV found, unreadable metadata or a missing column, no night with scored
            epochs, out_dir cannot be made.
    """
    from sleepppg.validation_stats import BOOTSTRAP_RESAMPLES

    if importlib.util.find_spec("yasa") is None:
        raise SetupError("yasa is not installed: pip install -r requirements.txt")
    out = Path(out_dir)
    csv_paths = find_night_csvs(paths, exclude=out)
    table = read_metadata(metadata, id_column or NSRR_ID_COLUMN, list(covariates)) if metadata else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SetupError(f"cannot create {out}: {err.strerror or err}") from None
    options = ReportOptions([str(p) for p in paths], metadata, synthetic,
                            BOOTSTRAP_RESAMPLES if bootstrap is None else bootstrap)
    with log_to_file(out / "validation_report.log"):
        return run_report(options, out, csv_paths, table)


def report_after_run(paths: Sequence[str | os.PathLike], out_dir: Path, metadata_file: str = "") -> Path | None:
    """The validation report a finished run writes for its nights (training: its test set; inference: its HDF5
    nights), with `evaluation.metadata_file` when set. It runs in a child process, so the run's own process
    never imports yasa (nor mne, which yasa imports). The run's work is done and kept whatever happens here:
    a report that cannot be made is a warning (its log: out_dir/validation_report.log), never the run's failure.

    Returns:
        report.md, or None when no report was written.
    """
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            status = pool.submit(validation_report, [str(p) for p in paths], str(out_dir),
                                 metadata=metadata_file or None).result()
    except Exception as err:  # noqa: BLE001 - the run is finished; its report is an extra, the reason is logged
        log.warning("no validation report in %s: %s: %s", out_dir, type(err).__name__, err)
        return None
    if status != EXIT_OK:
        log.warning("validation report in %s: some nights could not be read (see nights.csv)", out_dir)
    return Path(out_dir) / "report.md"
