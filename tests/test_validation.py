"""Tests for validation_report.py and sleepppg.validation / validation_stats / validation_figures: every number
against an independent computation (scikit-learn, numpy, scipy, counts of epochs), a hypnogram with known sleep
statistics, the leading-zero ID match, left-out and unreadable nights, bad setup (exit 2, one line), the figures,
and an end-to-end run on the CSVs of inference_ppg_only.py in HDF5 mode."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import write_processed, write_tiny_checkpoint

import validation_report as vr
from sleepppg import validation_stats as vs
from sleepppg.cli import run_entry_point
from sleepppg.errors import BadRecordingError
from sleepppg.validation import Night, match_metadata, read_metadata, read_night

STAGES = ("Wake", "Light", "Deep", "REM")
W, L, D, R, U = 0, 1, 2, 3, -1  # Wake, Light, Deep, REM, unscored / not staged
HEADER = "epoch,time_hours,pred_idx,pred_name,true_idx,true_name,mismatch,p_wake,p_light,p_deep,p_rem"
TOL = 1e-5  # the CSVs keep 8 significant digits
BOOTSTRAP = "30"  # resamples of the bootstrap CIs: enough to run the code, few enough to be quick


def write_night_csv(path: Path, true: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> Path:
    """A night CSV in inference's format (a gap: pred -1, pred_name Gap, no probabilities; unscored: true -1)."""
    lines = [HEADER]
    for e, (t, p, pr) in enumerate(zip(true.tolist(), pred.tolist(), probs.tolist())):
        truth = ",," if t == U else f"{t},{STAGES[t]},{int(t != p)}"
        if p == U:
            lines.append(f"{e},{e * 30 / 3600:.6f},,Gap,{truth.rsplit(',', 1)[0]},,,,,")
        else:
            lines.append(f"{e},{e * 30 / 3600:.6f},{p},{STAGES[p]},{truth}," + ",".join(f"{v:.6f}" for v in pr))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def synthetic_night(rng: np.random.Generator, n: int, accuracy: float, stages=(W, L, D, R)):
    """(true, pred, probs): runs of scored stages, a prediction right with probability `accuracy` (else another
    of `stages`), probabilities whose argmax is the prediction; a few unscored epochs first and one gap."""
    true = np.repeat(rng.choice(stages, size=n // 8 + 1), 8)[:n]
    pred = np.where(rng.random(n) < accuracy, true, rng.choice(stages, size=n))
    probs = 0.5 * rng.dirichlet(np.ones(4), size=n)
    probs[np.arange(n), pred] += 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    true[:3] = U
    gap = int(rng.integers(20, n - 20))
    pred[gap:gap + 2] = U
    return true, pred, probs


def report(argv: list[str]) -> int:
    return run_entry_point(vr.main, argv)


def compared(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = (true != U) & (pred != U)
    return true[keep], pred[keep]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Eight nights (night 0008 never has Deep), one without any scored epoch (0099) and one unreadable (0098)
    under <run>/csv, with result.json; metadata for subjects 1..6 only, IDs without leading zeros; the report
    run once on it."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(7)
    nights = {}
    for i in range(1, 9):
        sid = f"{i:04d}"
        stages = (W, L, R) if i == 8 else (W, L, D, R)
        nights[sid] = synthetic_night(rng, int(rng.integers(120, 200)), float(rng.uniform(0.5, 0.9)), stages)
        write_night_csv(root / "run" / "csv" / sid / f"{sid}.csv", *nights[sid])
    write_night_csv(root / "run" / "csv" / "0099" / "0099.csv", np.full(30, U), np.full(30, L),
                    np.tile([0.1, 0.7, 0.1, 0.1], (30, 1)))
    broken = write_night_csv(root / "run" / "csv" / "0098" / "0098.csv", *synthetic_night(rng, 60, 0.8))
    lines = broken.read_text().splitlines()
    lines[6] = "5,0.041667,7,Nap,1,Light,1,0.1,0.2,0.3,0.4"  # epoch 5 predicted as a stage that does not exist
    broken.write_text("\n".join(lines) + "\n")
    (root / "run" / "result.json").write_text(json.dumps(
        {"checkpoint": {"path": "/models/best_model.pth", "sha256": "0123abcd", "model_kind": "ppg_only"}}))
    ages, sexes, bmis, ahis = [52, 58, 63, 71, 77, 84], ["male", "female"] * 3, [22, 24, 27, 29, 31, 35], \
        [2, 4, 9, 18, 33, 45]
    meta = root / "nsrr.csv"
    meta.write_text("nsrrid,nsrr_age,nsrr_sex,nsrr_bmi,nsrr_ahi_hp3r_aasm15,nsrr_race\n" + "".join(
        f"{i + 1},{a},{s},{b},{h},white\n" for i, (a, s, b, h) in enumerate(zip(ages, sexes, bmis, ahis))))
    out = root / "report"
    code = report([str(root / "run" / "csv"), "--out-dir", str(out), "--metadata", str(meta), "--synthetic",
                   "--bootstrap", BOOTSTRAP])
    return SimpleNamespace(root=root, out=out, code=code, nights=nights, meta=meta,
                           ahi={f"{i + 1:04d}": h for i, h in enumerate(ahis)})


def read(cohort, name: str) -> pd.DataFrame:
    return pd.read_csv(cohort.out / name, dtype={"night": str})


# ----------------------------------------------------------------------------------------------------------
# Numbers against independent computations


def test_epoch_agreement_matches_sklearn(cohort):
    from sklearn.metrics import accuracy_score, cohen_kappa_score, matthews_corrcoef, precision_recall_fscore_support

    table = read(cohort, "epoch_agreement.csv").set_index("night")
    assert list(table.index) == [*cohort.nights, "pooled"]
    pairs = {sid: compared(true, pred) for sid, (true, pred, _) in cohort.nights.items()}
    pairs["pooled"] = tuple(np.concatenate(a) for a in zip(*pairs.values()))
    for sid, (t, p) in pairs.items():
        row = table.loc[sid]
        assert row["n_epochs"] == t.size
        assert row["accuracy"] == pytest.approx(accuracy_score(t, p), rel=1e-6)
        assert row["kappa"] == pytest.approx(cohen_kappa_score(t, p), rel=1e-6)
        assert row["mcc"] == pytest.approx(matthews_corrcoef(t, p), rel=1e-6)
        precision, recall, f1, _ = precision_recall_fscore_support(t, p, labels=[W, L, D, R], zero_division=np.nan)
        for k, name in enumerate(STAGES):
            np.testing.assert_allclose(
                [row[f"sensitivity_{name}"], row[f"precision_{name}"], row[f"f1_{name}"]],
                [recall[k], precision[k], f1[k]], rtol=1e-6, equal_nan=True, err_msg=f"{sid} {name}")
    # night 0008 has no Deep at all: Deep has no sensitivity, precision or F1 there
    assert table.loc["0008", ["sensitivity_Deep", "precision_Deep", "f1_Deep"]].isna().all()


def stage_minutes(stages: np.ndarray, which) -> float:
    return float(np.isin(stages, which).sum()) * 0.5


def test_known_hypnogram_sleep_statistics():
    true = np.array([W] * 10 + [L] * 100 + [D] * 20 + [R] * 30)
    night = Night("0001", Path("0001.csv"), true.copy(), true, np.full((true.size, 4), 0.25))
    scored, predicted = vs.sleep_statistics([night])
    stats = scored.loc["0001"]
    assert stats["TST"] == 75.0  # 150 sleep epochs of 30 s
    assert (stats["TIB"], stats["SE"], stats["SOL"], stats["WASO"]) == (80.0, 93.75, 5.0, 0.0)
    assert stats["Lat_REM"] == 65.0  # yasa: from the start of the hypnogram (130 epochs), not from sleep onset
    assert (stats["WAKE"], stats["LIGHT"], stats["DEEP"], stats["REM"]) == (5.0, 50.0, 10.0, 15.0)
    assert stats["%REM"] == pytest.approx(20.0) and stats["%LIGHT"] == pytest.approx(100 * 50 / 75, abs=1e-4)
    assert predicted.loc["0001"].equals(stats)

    # the same epochs for both: four unscored epochs first (outside the compared span), one unscored epoch and a
    # two-epoch prediction gap inside it (no stage in either hypnogram, but they keep their place in time)
    true, pred = true.copy(), true.copy()
    true[:4], true[50], pred[60:62] = U, U, U
    pred[70:80] = W  # ten Light epochs predicted Wake
    night = Night("0001", Path("0001.csv"), pred, true, np.full((true.size, 4), 0.25))
    scored, predicted = (frame.loc["0001"] for frame in vs.sleep_statistics([night]))
    assert scored["TIB"] == predicted["TIB"] == (160 - 4) * 0.5
    assert scored["SOL"] == predicted["SOL"] == (10 - 4) * 0.5
    assert scored["TST"] == (150 - 3) * 0.5 and predicted["TST"] == (150 - 3 - 10) * 0.5
    assert predicted["WASO"] == 5.0 and scored["WASO"] == 0.0


def test_sleep_stats_csv_is_side_by_side_and_counts_compared_epochs(cohort):
    table = read(cohort, "sleep_stats.csv").set_index("night")
    assert list(table.columns[:4]) == ["TIB_scored", "TIB_predicted", "SPT_scored", "SPT_predicted"]
    for sid, (true, pred, _) in cohort.nights.items():
        t, p = compared(true, pred)
        assert table.loc[sid, "TST_scored"] == pytest.approx(stage_minutes(t, (L, D, R)))
        assert table.loc[sid, "TST_predicted"] == pytest.approx(stage_minutes(p, (L, D, R)))
        assert table.loc[sid, "REM_predicted"] == pytest.approx(stage_minutes(p, (R,)))
    assert "0099" not in table.index and "0098" not in table.index


def test_bland_altman_matches_numpy_and_scipy(cohort):
    from scipy import stats

    ba = read(cohort, "bland_altman.csv").set_index("statistic")
    sleep = read(cohort, "sleep_stats.csv").set_index("night")
    assert list(ba.index) == list(vs.AGREEMENT_STATISTICS)
    assert (ba["ci_method"] == "param").any()  # so the parametric CIs below are checked
    for name, row in ba.iterrows():
        both = sleep[[f"{name}_scored", f"{name}_predicted"]].dropna()
        scored, diff = both[f"{name}_scored"].to_numpy(), both[f"{name}_predicted"].to_numpy() - both.iloc[:, 0]
        diff = diff.to_numpy()
        assert row["n"] == diff.size
        assert row["mean_predicted"] - row["mean_scored"] == pytest.approx(diff.mean(), abs=TOL)
        if not np.isfinite(row["proportional_bias_slope"]):
            continue  # too few nights, or no disagreement: no framework row
        sd = diff.std(ddof=1)
        assert row["bias"] == pytest.approx(diff.mean(), abs=TOL)  # predicted - scored
        assert row["loa_lower"] == pytest.approx(diff.mean() - 1.96 * sd, abs=TOL)
        assert row["loa_upper"] == pytest.approx(diff.mean() + 1.96 * sd, abs=TOL)
        fit = stats.linregress(scored, diff)
        assert row["proportional_bias_slope"] == pytest.approx(fit.slope, rel=1e-5, abs=1e-9)
        assert row["proportional_bias_p"] == pytest.approx(fit.pvalue, rel=1e-5)
        assert row["proportional_bias"] == (row["bias_method"] == "regr")
        if row["ci_method"] == "param":
            t = stats.t.ppf(0.975, diff.size - 1) * sd / np.sqrt(diff.size)
            assert (row["bias_ci_lower"], row["bias_ci_upper"]) == pytest.approx(
                (diff.mean() - t, diff.mean() + t), abs=TOL)
            assert (row["loa_upper_ci_lower"], row["loa_upper_ci_upper"]) == pytest.approx(
                (row["loa_upper"] - np.sqrt(3) * t, row["loa_upper"] + np.sqrt(3) * t), abs=TOL)


def test_calibration_ece_matches_a_slow_loop(cohort):
    nights = [Night(sid, Path(sid), pred, true, np.where((pred == U)[:, None], np.nan, probs))
              for sid, (true, pred, probs) in cohort.nights.items()]
    curves, ece = vs.calibration(nights, n_bins=10)
    keep = [(n.true_E != U) & (n.pred_E != U) for n in nights]
    probs = np.concatenate([n.probs_EC[k] for n, k in zip(nights, keep)])
    true = np.concatenate([n.true_E[k] for n, k in zip(nights, keep)])
    for target, hit, p in [*[(s, true == k, probs[:, k]) for k, s in enumerate(STAGES)],
                           ("top label", probs.argmax(1) == true, probs.max(1))]:
        total = 0.0
        for b in range(10):
            low, high = b / 10, (b + 1) / 10
            inside = (p >= low) & ((p < high) if b < 9 else (p <= high))
            if inside.any():
                total += inside.sum() / p.size * abs(hit[inside].mean() - p[inside].mean())
        assert ece[target] == pytest.approx(total, abs=1e-9), target
    assert set(curves["target"]) == {*STAGES, "top label"} and curves.groupby("target")["n"].sum().nunique() == 1
    text = (cohort.out / "report.md").read_text()
    assert f"top label {ece['top label']:.3f}" in text


def test_subgroups_match_numpy_and_sklearn(cohort):
    from sklearn.metrics import cohen_kappa_score

    table = read(cohort, "subgroups.csv")
    assert list(table.columns) == list(vs.SUBGROUP_COLUMNS)
    kappa = {sid: cohen_kappa_score(*compared(t, p)) for sid, (t, p, _) in cohort.nights.items()}
    tst_diff = {sid: stage_minutes(compared(t, p)[1], (L, D, R)) - stage_minutes(compared(t, p)[0], (L, D, R))
                for sid, (t, p, _) in cohort.nights.items()}
    expected = {"<5 (none)": ["0001", "0002"], "5-15 (mild)": ["0003"], "15-30 (moderate)": ["0004"],
                ">=30 (severe)": ["0005", "0006"], "(missing)": ["0007", "0008"]}
    ahi = table[table["covariate"] == "nsrr_ahi_hp3r_aasm15"].set_index("group")
    assert list(ahi.index) == list(expected)
    for group, members in expected.items():
        k = [kappa[m] for m in members]
        t, p = (np.concatenate(a) for a in zip(*(compared(*cohort.nights[m][:2]) for m in members)))
        row = ahi.loc[group]
        assert row["n"] == len(members)
        assert row["median_kappa"] == pytest.approx(np.median(k), rel=1e-6)
        assert row["iqr_kappa"] == pytest.approx(np.percentile(k, 75) - np.percentile(k, 25), abs=1e-7)
        assert row["pooled_kappa"] == pytest.approx(cohen_kappa_score(t, p), rel=1e-6)
        assert row["tst_bias"] == pytest.approx(np.mean([tst_diff[m] for m in members]), abs=1e-6)
    assert set(table["covariate"]) == {"nsrr_age", "nsrr_sex", "nsrr_bmi", "nsrr_ahi_hp3r_aasm15"}
    assert set(table.loc[table["covariate"] == "nsrr_bmi", "group"]) == {
        "18.5-25 (normal)", "25-30 (overweight)", ">=30 (obese)", "(missing)"}


def test_covariate_bands():
    ahi = pd.Series([0.0, 4.9, 5.0, 14.9, 15.0, 29.9, 30.0, np.nan])
    assert vs.covariate_groups(ahi, "nsrr_ahi_hp3r_aasm15").tolist() == [
        "<5 (none)", "<5 (none)", "5-15 (mild)", "5-15 (mild)", "15-30 (moderate)", "15-30 (moderate)",
        ">=30 (severe)", "(missing)"]
    assert vs.covariate_groups(pd.Series([49.0, 50.0, 80.0]), "nsrr_age").tolist() == ["<50", "50-59", ">=80"]
    assert vs.covariate_groups(pd.Series(["male", None]), "nsrr_sex").tolist() == ["male", "(missing)"]
    assert vs.covariate_groups(pd.Series(np.arange(8.0)), "other").nunique() == 4  # quartiles


# ----------------------------------------------------------------------------------------------------------
# Inputs: IDs, metadata, left-out and unreadable nights


def test_leading_zero_ids_match_and_missing_subjects_are_named(cohort, tmp_path):
    meta = tmp_path / "m.csv"
    meta.write_text("nsrrid,nsrr_age\n1,60\n10,70\n")
    rows, missing = match_metadata(["0001", "0010", "0003"], read_metadata(meta, covariates=["nsrr_age"]))
    assert rows["nsrr_age"].tolist()[:2] == [60, 70] and np.isnan(rows.loc["0003", "nsrr_age"])
    assert missing == ["0003"]

    by_night = read(cohort, "kappa_by_covariate.csv").set_index("night")
    assert by_night.loc["0001", "nsrr_age"] == 52 and by_night.loc["0006", "nsrr_ahi_hp3r_aasm15"] == 45
    assert by_night.loc[["0007", "0008"], "nsrr_age"].isna().all()  # no metadata: kept, never dropped
    assert "2 subject(s) without metadata: 0007, 0008" in (cohort.out / "report.md").read_text()


def test_left_out_and_unreadable_nights_are_listed(cohort):
    assert cohort.code == 1  # 0098 could not be read; the others are reported
    status = read(cohort, "nights.csv").set_index("night")
    assert status.loc["0099", "status"] == "left out" and status.loc["0099", "reason"] == "no scored epoch"
    assert status.loc["0098", "status"] == "unreadable" and "pred_idx" in status.loc["0098", "reason"]
    assert (status.loc[list(cohort.nights), "status"] == "compared").all()
    text = (cohort.out / "report.md").read_text()
    assert "- 0099: no scored epoch" in text and "- 0098: " in text and "# Validation report: 8 nights" in text


def test_read_night_gaps_unscored_and_bad_values(tmp_path):
    true, pred = np.array([U, W, L, L, R]), np.array([W, W, U, L, R])
    probs = np.tile([0.7, 0.1, 0.1, 0.1], (5, 1))
    night = read_night(write_night_csv(tmp_path / "0007.csv", true, pred, probs))
    assert night.night_id == "0007" and night.pred_E.tolist() == pred.tolist()
    assert night.true_E.tolist() == true.tolist() and np.isnan(night.probs_EC[2]).all()
    assert night.compared_E.tolist() == [False, True, False, True, True]
    bad = tmp_path / "0008.csv"
    bad.write_text(f"{HEADER}\n0,0,1,Light,9,X,1,0.1,0.7,0.1,0.1\n")
    with pytest.raises(BadRecordingError, match="true_idx holds '9' \\(row 2\\)"):
        read_night(bad)


@pytest.mark.parametrize("case", ["misspelled covariate", "default covariate missing", "no csv",
                                  "unreadable metadata", "missing input", "out-dir holds an input"])
def test_bad_setup_is_exit_2_and_one_line(tmp_path, capsys, case):
    night = write_night_csv(tmp_path / "in" / "0001.csv", np.array([W, L]), np.array([W, L]),
                            np.tile([0.25] * 4, (2, 1)))
    meta = tmp_path / "meta.csv"
    meta.write_text("nsrrid,nsrr_age,nsrr_sex,nsrr_bmi\n1,60,male,25\n")
    argv, named = {
        "misspelled covariate": ([str(night), "--metadata", str(meta), "--covariates", "nsrr_age,nsrr_bmii"],
                                 "'nsrr_bmii'"),
        "default covariate missing": ([str(night), "--metadata", str(meta)], "'nsrr_ahi_hp3r_aasm15'"),
        "no csv": ([str(tmp_path / "empty")], "no night CSV"),
        "unreadable metadata": ([str(night), "--metadata", str(tmp_path / "nope.csv")], "nope.csv"),
        "missing input": ([str(tmp_path / "nowhere")], "nowhere"),
        "out-dir holds an input": ([str(night)], "--out-dir " + str(tmp_path / "in") + " holds the input"),
    }[case]
    (tmp_path / "empty").mkdir()
    out = tmp_path / ("in" if case == "out-dir holds an input" else "out")
    assert report([*argv, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err


# ----------------------------------------------------------------------------------------------------------
# Outputs: figures, report


def test_figures_are_nontrivial_pngs_with_their_csv(cohort):
    import matplotlib.image as mpimg

    pngs = sorted((cohort.out / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"confusion_matrix", "kappa_distribution", "reliability", "kappa_vs_covariates", "hypnogram_best",
            "hypnogram_median", "hypnogram_worst", "bland_altman_TST", "bland_altman_pct_REM"} <= names
    for png in pngs:
        assert png.stat().st_size > 5000, png.name
        image = mpimg.imread(png)
        assert image.ndim == 3 and image.shape[0] > 200 and image[..., :3].std() > 0.01, png.name
    for table in ("confusion_matrix.csv", "bland_altman_points.csv", "calibration.csv", "hypnograms.csv",
                  "kappa_by_covariate.csv", "epoch_agreement.csv"):
        assert (cohort.out / table).stat().st_size > 100, table
    counts = pd.read_csv(cohort.out / "confusion_matrix.csv", index_col=0)
    t, p = (np.concatenate(a) for a in zip(*(compared(t, p) for t, p, _ in cohort.nights.values())))
    assert counts.loc["REM", "count_Wake"] == int(((t == R) & (p == W)).sum())
    hypnograms = read(cohort, "hypnograms.csv")
    assert set(hypnograms["role"]) == {"best", "median", "worst"}


def test_report_links_everything_and_names_the_checkpoint(cohort):
    text = (cohort.out / "report.md").read_text()
    assert "/models/best_model.pth (sha256 0123abcd" in text
    assert "**Synthetic data**" in text
    assert str((cohort.root / "run" / "csv").resolve()) in text
    for link in ("epoch_agreement.csv", "sleep_stats.csv", "bland_altman.csv", "subgroups.csv", "calibration.csv",
                 "figures/confusion_matrix.png", "figures/reliability.png", "figures/bland_altman_TST.png",
                 "figures/hypnogram_worst.png", "figures/kappa_vs_covariates.png", "nights.csv"):
        assert f"({link})" in text, link
        assert (cohort.out / link).is_file(), link


# ----------------------------------------------------------------------------------------------------------
# End to end: inference in HDF5 mode writes the CSVs, the report reads them


N_WIN = 40  # model span: 40 x 30 s = 20 min


def test_report_on_inference_csvs(tmp_path):
    import yaml

    import inference_ppg_only as inf
    from sleepppg.config import load_config

    checkpoint = write_tiny_checkpoint(tmp_path / "best_model.pth", N_WIN)
    files = write_processed(tmp_path / "mesa", n_subjects=6, windows_per_subject=N_WIN, n_test=4)
    cfg = load_config(Path(inf.__file__).resolve().parent / "configs" / "config_demo.yaml", {
        "data.ppg_file": files["ppg"], "data.ecg_file": files["ecg"], "data.index_file": files["index"],
        "data.windows_per_subject": N_WIN, "inference.best_model": str(checkpoint),
        "inference.only_inference": False, "inference.cache_root": str(tmp_path / "cache"),
        "inference.save_dir": str(tmp_path / "runs"), "inference.batch_size": 2, "gpu.mixed_precision": False,
        "evaluation.validation_report": False})  # the report is made below, from the run's CSVs
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert inf.main(["--config", str(tmp_path / "config.yaml"), "--device", "cpu", "--n-subjects", "4"]) == 0
    run_dir = next((tmp_path / "runs").iterdir())
    result = json.loads((run_dir / "result.json").read_text())

    out = tmp_path / "validation"
    assert report([str(run_dir / "csv"), "--out-dir", str(out), "--bootstrap", BOOTSTRAP]) == 0
    table = pd.read_csv(out / "epoch_agreement.csv", dtype={"night": str}).set_index("night")
    assert sorted(table.index[:-1]) == sorted(n["subject_id"] for n in result["nights"])
    for entry in result["nights"]:
        assert table.loc[entry["subject_id"], "accuracy"] == pytest.approx(entry["performance"]["accuracy"], rel=1e-6)
        assert table.loc[entry["subject_id"], "n_epochs"] == entry["performance"]["n_epochs_compared"]
    assert table.loc["pooled", "kappa"] == pytest.approx(result["metrics"]["pooled"]["kappa"], rel=1e-6)
    text = (out / "report.md").read_text()
    assert f"{result['checkpoint']['path']} (sha256 {result['checkpoint']['sha256']};" in text and "Synthetic data" not in text
    assert (out / "figures" / "bland_altman_TST.png").stat().st_size > 5000
