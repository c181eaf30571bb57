"""Tests for inference_ppg_only.py: end-to-end HDF5 and EDF runs on tiny synthetic nights (with the package
modules it drives: sleepppg.nights, .cache, .staging, .outputs, .report), bad setup, bad data and Ctrl-C."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import (
    assert_png,
    interrupted_on_call,
    npy_data_offset,
    read_csv,
    synthetic_night,
    write_edf,
    write_processed,
    write_tiny_checkpoint,
    write_xml,
)

import inference_ppg_only as inf
import sleepppg.nights
import sleepppg.outputs
import sleepppg.staging
from sleepppg.cache import CACHE_META_FILE, CACHE_WINDOWS_FILE
from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.errors import SetupError
from sleepppg.nights import select_hdf5_nights
from sleepppg.outputs import CSV_COLUMNS, RESULT_FORMAT
from sleepppg.preprocessing import preprocess_recording

# ----------------------------------------------------------------------------------------------------------
# End to end: a tiny untrained model (40 windows = 20 min) and short synthetic EDFs

N_WIN = 40  # model span in tests: 40 x 30 s = 20 min


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth", N_WIN)


def make_config(tmp_path: Path, **overrides) -> Path:
    """configs/config_demo.yaml with paths under tmp_path (and `overrides`), written as a new YAML file."""
    import yaml

    from sleepppg.config import load_config

    repo = Path(inf.__file__).resolve().parent
    base = {"inference.cache_root": str(tmp_path / "cache"), "inference.save_dir": str(tmp_path / "out"),
            "inference.batch_size": 2, "gpu.mixed_precision": False,
            "evaluation.validation_report": False}  # HDF5 mode's report: on where a test checks it
    cfg = load_config(repo / "configs" / "config_demo.yaml", {**base, **overrides})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cfg: Path, out: Path, *extra: str) -> tuple[int, dict, Path]:
    """main() into a fresh output folder; returns (exit status, result.json, run folder)."""
    code = inf.main(["--config", str(cfg), "--out", str(out), "--device", "cpu", *extra])
    runs = sorted(out.iterdir()) if out.exists() else []
    if not runs:
        return code, {}, out
    return code, json.loads((runs[-1] / "result.json").read_text()), runs[-1]


def test_edf_folder_channel_variants_rates_and_broken_files(tmp_path, checkpoint):
    edfs = tmp_path / "edfs"
    good = {"0001": ("Pleth", 256), "0002": ("PPG", 125), "0003": ("BVP", 250), "0004": ("Plethysmogram", 256)}
    for i, (sid, (label, fs)) in enumerate(good.items()):
        write_edf(edfs / f"mesa-sleep-{sid}.edf", 20, fs_ppg=fs, ppg_label=label, seed=i)
    write_edf(edfs / "mesa-sleep-0005.edf", 20, ppg_label=None)  # no PPG channel
    write_edf(edfs / "mesa-sleep-0006.edf", 20, flat_ppg=True)  # flat PPG
    (edfs / "mesa-sleep-0007.edf").write_bytes(b"not an EDF at all" * 50)  # corrupt
    cfg = make_config(tmp_path)
    code, result, run_dir = run(cfg, tmp_path / "out", "--checkpoint", str(checkpoint), "--edf", str(edfs))
    assert code == inf.EXIT_NIGHT_FAILED
    assert result["mode"] == "EDF" and result["n_nights_staged"] == 4 and result["n_nights_failed"] == 3
    assert sorted(f["subject_id"] for f in result["failed"]) == ["0005", "0006", "0007"]
    kinds = {f["subject_id"]: f["kind"] for f in result["failed"]}
    assert kinds["0005"] == "no_ppg_channel" and kinds["0006"] == "flat_ppg"
    for item in result["nights"]:
        sid = item["subject_id"]
        label, fs = good[sid]
        assert item["ppg_channel"] == label and item["ppg_fs"] == fs
        assert item["cache_used"] is False and item["n_epochs_staged"] == N_WIN and not item["truncated"]
        header, rows = read_csv(run_dir / "csv" / sid / f"{sid}.csv")
        assert header == list(CSV_COLUMNS) and len(rows) == N_WIN
        assert all(r[4] == r[5] == r[6] == "" for r in rows)
        assert np.allclose([sum(float(v) for v in r[7:11]) for r in rows], 1.0, atol=1e-5)
        assert_png(run_dir / "graph" / sid / f"{sid}.png")
        assert not (run_dir / "graph" / sid / f"{sid}_with_label.png").exists()
        assert item["sleep_report"]["TIB"] == N_WIN / 2
        assert sorted(p.name for p in (tmp_path / "cache" / sid).iterdir()) == ["meta.json", "ppg_windows.npy"]


def test_cache_reuse_invalidation_and_corruption(tmp_path, checkpoint, monkeypatch, caplog):
    edf = write_edf(tmp_path / "edfs" / "mesa-sleep-0042.edf", 20)
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint)})
    code, first, run1 = run(cfg, tmp_path / "o1", "--edf", str(edf))
    assert code == 0 and first["nights"][0]["cache_used"] is False
    pred_first = [r[2:] for r in read_csv(run1 / "csv" / "0042" / "0042.csv")[1]]  # stage and probabilities

    calls = []
    real = preprocess_recording
    monkeypatch.setattr(sleepppg.nights, "preprocess_recording", lambda *a, **k: calls.append(a) or real(*a, **k))
    code, second, run2 = run(cfg, tmp_path / "o2", "--edf", str(edf))
    assert code == 0 and second["nights"][0]["cache_used"] is True and calls == []
    assert [r[2:] for r in read_csv(run2 / "csv" / "0042" / "0042.csv")[1]] == pred_first

    # the EDF is rewritten (new content, new mtime): rebuilt
    write_edf(edf, 20, seed=7)
    caplog.clear()
    code, third, _ = run(cfg, tmp_path / "o3", "--edf", str(edf))
    assert code == 0 and third["nights"][0]["cache_used"] is False and len(calls) == 1
    assert any("rebuilding cache" in r.getMessage() and "EDF changed" in r.getMessage() for r in caplog.records)

    # a truncated .npy: rebuilt, with a log line
    npy = tmp_path / "cache" / "0042" / CACHE_WINDOWS_FILE
    npy.write_bytes(npy.read_bytes()[:5000])
    caplog.clear()
    code, fourth, _ = run(cfg, tmp_path / "o4", "--edf", str(edf))
    assert code == 0 and fourth["nights"][0]["cache_used"] is False and len(calls) == 2
    assert any("corrupt cache" in r.getMessage() for r in caplog.records)
    code, fifth, _ = run(cfg, tmp_path / "o5", "--edf", str(edf))
    assert fifth["nights"][0]["cache_used"] is True and len(calls) == 2


def test_short_and_long_nights(tmp_path, checkpoint):
    edfs = tmp_path / "edfs"
    write_edf(edfs / "mesa-sleep-0100.edf", 15)  # 30 epochs of the model's 40
    write_edf(edfs / "mesa-sleep-0101.edf", 25)  # 50 epochs: only the first 40 are staged
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint), "inference.save_graph": False})
    code, result, run_dir = run(cfg, tmp_path / "out", "--edf", str(edfs / "*.edf"))
    assert code == 0
    items = {i["subject_id"]: i for i in result["nights"]}
    short, long_ = items["0100"], items["0101"]
    assert short["n_epochs_staged"] == 30 and not short["truncated"]
    assert short["sleep_report"]["TIB"] == 15.0  # the padding is not staged
    assert len(read_csv(run_dir / "csv" / "0100" / "0100.csv")[1]) == 30
    assert long_["n_epochs_staged"] == N_WIN and long_["truncated"] is True
    assert long_["recording_hours"] == pytest.approx(25 / 60)
    assert len(read_csv(run_dir / "csv" / "0101" / "0101.csv")[1]) == N_WIN
    assert not (run_dir / "graph").exists()


def test_hdf5_mode_metrics_match_sklearn(tmp_path, checkpoint, capsys):
    from sklearn.metrics import accuracy_score, cohen_kappa_score

    from sleepppg.ids import sleepppg_test_subjects

    short = sleepppg_test_subjects()[0]  # a test subject with one window too few: not valid
    files = write_processed(tmp_path / "mesa-x", n_subjects=8, windows_per_subject=N_WIN, n_test=4,
                            short_subjects=(short,))
    overrides = {"data.ppg_file": files["ppg"], "data.ecg_file": files["ecg"], "data.index_file": files["index"],
                 "data.windows_per_subject": N_WIN, "inference.best_model": str(checkpoint),
                 "inference.only_inference": False}
    meta = tmp_path / "metadata.csv"  # evaluation.metadata_file: NSRR IDs without leading zeros
    meta.write_text("nsrrid,nsrr_age,nsrr_sex,nsrr_bmi,nsrr_ahi_hp3r_aasm15\n" + "".join(
        f"{int(sid)},{50 + k},{'male' if k % 2 else 'female'},{24 + k},{3 + 5 * k}\n"
        for k, sid in enumerate(sleepppg_test_subjects()[:4])))
    cfg = make_config(tmp_path, **overrides,
                      **{"evaluation.metadata_file": str(meta), "evaluation.validation_report": True})
    code, result, run_dir = run(cfg, tmp_path / "out", "--n-subjects", "2")
    assert code == 0 and result["mode"] == "HDF5" and len(result["nights"]) == 2
    test_ids = set(sleepppg_test_subjects()[1:4])
    from sleepppg.config import load_config
    sel = select_hdf5_nights(load_config(cfg), N_WIN, n_subjects=10)
    assert sorted(sel.subjects) == sorted(test_ids)  # valid test subjects only, capped at what exists
    assert sel.subjects[:2] == [i["subject_id"] for i in result["nights"]]
    all_true, all_pred, accs = [], [], []
    for item in result["nights"]:
        sid = item["subject_id"]
        assert sid in test_ids
        _, rows = read_csv(run_dir / "csv" / sid / f"{sid}.csv")
        assert len(rows) == item["n_epochs_staged"]
        scored = [r for r in rows if r[4] != ""]
        y_true = [int(r[4]) for r in scored]
        y_pred = [int(r[2]) for r in scored]
        assert all(r[6] == str(int(int(r[2]) != int(r[4]))) for r in scored)
        acc = accuracy_score(y_true, y_pred)
        assert item["performance"]["accuracy"] == pytest.approx(acc)
        assert item["performance"]["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred, labels=[0, 1, 2, 3]))
        assert item["performance"]["n_epochs_compared"] == len(scored)
        assert_png(run_dir / "graph" / sid / f"{sid}_with_label.png")
        all_true += y_true
        all_pred += y_pred
        accs.append(acc)
    # the console shows the predicted sleep report beside the scored one, with the difference
    out = capsys.readouterr().out
    first = result["nights"][0]
    pred_rep, true_rep, diff = first["sleep_report"], first["sleep_report_scored"], first["sleep_report_difference"]
    assert diff["TST"] == pytest.approx(pred_rep["TST"] - true_rep["TST"])
    assert diff["REM"] == pytest.approx(pred_rep["REM"] - true_rep["REM"])
    assert pred_rep["TIB"] == true_rep["TIB"] and diff["TIB"] == 0  # the same epochs on both sides
    assert "predicted    scored  difference" in out
    tst_line = next(line for line in out.splitlines() if "total sleep time" in line)
    assert tst_line.split()[-3:] == [f"{pred_rep['TST']:.1f}", f"{true_rep['TST']:.1f}", f"{diff['TST']:+.1f}"]
    assert result["paths"] == "absolute" and first["source_file"] == str(Path(files["ppg"]).resolve())
    metrics = result["metrics"]
    assert metrics["acc_mean"] == pytest.approx(np.mean(accs)) and metrics["acc_std"] == pytest.approx(np.std(accs))
    assert metrics["pooled"]["accuracy"] == pytest.approx(accuracy_score(all_true, all_pred))
    assert metrics["pooled"]["kappa"] == pytest.approx(cohen_kappa_score(all_true, all_pred, labels=[0, 1, 2, 3]))
    # the validation report of the staged nights, with the metadata's subgroups
    import pandas as pd
    agreement = pd.read_csv(run_dir / "validation" / "epoch_agreement.csv", index_col=0)
    assert agreement.loc["pooled", "kappa"] == pytest.approx(metrics["pooled"]["kappa"], abs=1e-6)
    assert sorted(agreement.index.drop("pooled")) == sorted(i["subject_id"] for i in result["nights"])
    assert set(pd.read_csv(run_dir / "validation" / "subgroups.csv")["covariate"]) >= {"nsrr_age", "nsrr_sex"}
    # each night's sleep report in result.json is the validation report's sleep_stats.csv row
    stats = pd.read_csv(run_dir / "validation" / "sleep_stats.csv", index_col=0, dtype={"night": str})
    for item in result["nights"]:
        for key in ("TIB", "TST", "SE", "SOL", "WASO", "Lat_REM", "REM"):
            for report, who in ((item["sleep_report"], "predicted"), (item["sleep_report_scored"], "scored")):
                value = stats.loc[item["subject_id"], f"{key}_{who}"]
                assert (report[key] is None) if np.isnan(value) else report[key] == pytest.approx(value)
    assert f"Validation report: {run_dir / 'validation' / 'report.md'}" in out
    from sleepppg.checkpoints import file_sha256
    assert result["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert f"(sha256 {result['checkpoint']['sha256']};" in (run_dir / "validation" / "report.md").read_text()
    # the same seed picks the same subjects; a report that cannot be made (metadata missing) is a warning only
    (tmp_path / "c2").mkdir()
    cfg2 = make_config(tmp_path / "c2", **overrides, **{"evaluation.metadata_file": str(tmp_path / "none.csv"),
                                                        "evaluation.validation_report": True})
    code, again, run2 = run(cfg2, tmp_path / "out2", "--n-subjects", "2")
    assert [i["subject_id"] for i in again["nights"]] == [i["subject_id"] for i in result["nights"]]
    assert code == 0 and not (run2 / "validation" / "report.md").exists()
    assert "no validation report" in (run2 / "inference.log").read_text()


def test_edf_mode_with_labels_scores_matched_nights(tmp_path, checkpoint, caplog):
    from sklearn.metrics import accuracy_score, cohen_kappa_score

    edfs, labels = tmp_path / "edfs", tmp_path / "labels"
    for i, sid in enumerate(("0001", "0002", "0003", "0004")):
        write_edf(edfs / f"mesa-sleep-{sid}.edf", 20, seed=i)
    stages = [("Wake|0", 0, 300), ("Stage 2 sleep|2", 300, 300), ("Stage 3 sleep|3", 600, 300),
              ("REM sleep|5", 900, 300)]
    write_xml(labels / "mesa-sleep-1-nsrr.xml", stages)  # leading zeros dropped: still night 0001
    labels.joinpath("mesa-sleep-0002.csv").write_text("stage\n" + "W\nN1\nN2\nN3\nR\n" * 8)
    labels.joinpath("mesa-sleep-0004.csv").write_text("stage\nN9\n")  # unreadable: staged without labels
    cfg = make_config(tmp_path)
    caplog.set_level("INFO")
    code, result, run_dir = run(cfg, tmp_path / "out", "--checkpoint", str(checkpoint), "--edf", str(edfs),
                                "--labels", str(labels))
    assert code == 0 and len(result["nights"]) == 4
    nights = {n["subject_id"]: n for n in result["nights"]}
    assert set(nights["0001"]) >= {"performance", "sleep_report_scored", "sleep_report_difference"}
    assert "performance" in nights["0002"] and "performance" not in nights["0003"]
    assert "performance" not in nights["0004"] and "N9" in nights["0004"]["labels_error"]
    assert any("N9" in w for w in nights["0004"]["warnings"])
    assert nights["0003"]["labels_file"] is None
    assert nights["0001"]["labels_file"] == str((labels / "mesa-sleep-1-nsrr.xml").resolve())
    all_true, all_pred = [], []
    for sid in ("0001", "0002"):
        _, rows = read_csv(run_dir / "csv" / sid / f"{sid}.csv")
        y_true, y_pred = [int(r[4]) for r in rows if r[4] != ""], [int(r[2]) for r in rows if r[4] != ""]
        assert len(y_true) == 40 and nights[sid]["performance"]["n_epochs_compared"] == 40
        assert nights[sid]["performance"]["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
        assert_png(run_dir / "graph" / sid / f"{sid}_with_label.png")
        all_true += y_true
        all_pred += y_pred
    _, rows = read_csv(run_dir / "csv" / "0001" / "0001.csv")
    assert [int(r[4]) for r in rows[::10]] == [0, 1, 2, 3]
    _, rows = read_csv(run_dir / "csv" / "0003" / "0003.csv")
    assert all(r[4] == "" for r in rows)
    assert result["metrics"]["subjects"] == 2
    assert result["metrics"]["pooled"]["kappa"] == pytest.approx(cohen_kappa_score(all_true, all_pred,
                                                                                   labels=[0, 1, 2, 3]))
    assert "2 of 4 staged night(s) compared with their labels; 2 without labels: 0003, 0004" in caplog.text


def test_hdf5_night_with_a_nan_sample_is_staged_where_valid(tmp_path, checkpoint, monkeypatch):
    """One NaN sample in a test night of the processed file: that window is not staged (a gap, "Gap" in the
    CSV), the rest of the night is, the night's warnings say how many windows were left out and why, and
    accuracy/kappa are over the staged, scored epochs."""
    from sklearn.metrics import accuracy_score

    files = write_processed(tmp_path / "mesa-x", n_subjects=3, windows_per_subject=N_WIN, n_test=1)
    sid = files["subjects"][0]  # the one test subject
    with h5py.File(files["ppg"], "r+") as f:
        start = int(np.flatnonzero(f["subject_ids"][()] == sid.encode())[0])
        labels_W = f["labels"][start:start + N_WIN]
        bad = int(np.flatnonzero(labels_W != -1)[5])  # a scored epoch
        f["ppg"][start + bad, 100] = np.nan
    overrides = {"data.ppg_file": files["ppg"], "data.ecg_file": files["ecg"], "data.index_file": files["index"],
                 "data.windows_per_subject": N_WIN, "inference.best_model": str(checkpoint),
                 "inference.only_inference": False, "inference.save_graph": False}
    monkeypatch.setattr(inf, "write_validation", lambda run, record: None)  # the study has tests of its own
    code, result, run_dir = run(make_config(tmp_path, **overrides), tmp_path / "out", "--n-subjects", "1")
    assert code == 0 and result["n_nights_failed"] == 0
    night = result["nights"][0]
    n_staged = night["n_epochs_staged"]
    assert night["gap_epochs"] == [bad] and night["windows_left_out"]["count"] == 1
    assert f"1 of {n_staged} windows not staged: NaN/inf PPG values in the processed file" in night["warnings"]
    _, rows = read_csv(run_dir / "csv" / sid / f"{sid}.csv")
    assert rows[bad][3] == "Gap" and sum(r[3] == "Gap" for r in rows) == 1  # every other epoch staged
    scored = [r for r in rows if r[4] != "" and r[3] != "Gap"]
    assert night["performance"]["n_epochs_compared"] == len(scored) == int((labels_W[:n_staged] != -1).sum()) - 1
    assert night["performance"]["accuracy"] == pytest.approx(
        accuracy_score([int(r[4]) for r in scored], [int(r[2]) for r in scored]))
    assert result["metrics"]["pooled"]["n_epochs"] == len(scored)


def test_labels_flag_is_refused_in_hdf5_mode(tmp_path, checkpoint, caplog):
    labels = tmp_path / "l.csv"
    labels.write_text("W\n")
    cfg = make_config(tmp_path, **{"inference.only_inference": False})
    out = tmp_path / "out"
    assert run(cfg, out, "--checkpoint", str(checkpoint), "--labels", str(labels))[0] == inf.EXIT_SETUP
    assert "--labels" in caplog.text and not out.exists()
    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", 20)
    assert run(make_config(tmp_path), out, "--edf", str(edf), "--checkpoint", str(checkpoint), "--labels",
               str(tmp_path / "nowhere"))[0] == inf.EXIT_SETUP


def test_bad_setup_exits_2(tmp_path, checkpoint):
    import torch

    from multimodal_sleep_model import MultiModalSleepNet
    from sleepppg.checkpoints import checkpoint_model_fields

    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", 20)
    cfg = make_config(tmp_path)
    out = tmp_path / "out"
    assert run(cfg, out, "--checkpoint", str(tmp_path / "missing.pth"), "--edf", str(edf))[0] == inf.EXIT_SETUP
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(cfg, out, "--checkpoint", str(checkpoint), "--edf", str(empty))[0] == inf.EXIT_SETUP
    assert run(cfg, out, "--checkpoint", str(checkpoint), "--edf", str(tmp_path / "x*.edf"))[0] == inf.EXIT_SETUP
    ecg_model = MultiModalSleepNet(n_windows=N_WIN, fusion_strategy="concat")
    wrong = tmp_path / "ecg.pth"
    torch.save({**checkpoint_model_fields(ecg_model), "model_state_dict": ecg_model.state_dict()}, wrong)
    with pytest.raises(SetupError, match="real_ecg"):
        inf.load_model(str(wrong), torch.device("cpu"))
    assert run(cfg, out, "--checkpoint", str(wrong), "--edf", str(edf))[0] == inf.EXIT_SETUP
    hdf5_cfg = make_config(tmp_path, **{"inference.only_inference": False, "data.windows_per_subject": 1200})
    assert run(hdf5_cfg, out, "--checkpoint", str(checkpoint))[0] == inf.EXIT_SETUP  # 40-window model
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(cfg.read_text().replace("only_inference: false", "only_inference: flase"))
    assert run(bad_cfg, out, "--checkpoint", str(checkpoint))[0] == inf.EXIT_SETUP
    assert not out.exists()  # nothing written on bad setup


def test_output_flags_are_honoured(tmp_path, checkpoint):
    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", 20)
    cfg = make_config(tmp_path, **{"inference.save_csv": False, "inference.save_graph": False,
                                   "inference.save_json": False})
    code = inf.main(["--config", str(cfg), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                     "--edf", str(edf), "--device", "cpu"])
    (run_dir,) = list((tmp_path / "out").iterdir())
    assert code == 0 and sorted(p.name for p in run_dir.iterdir()) == ["inference.log"]


def test_command_line_script(tmp_path, checkpoint):
    """The script as a user runs it (its own process: the allocator setting of the entry point applies)."""
    import subprocess
    import sys

    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", 20)
    cfg = make_config(tmp_path)
    script = Path(inf.__file__).resolve()
    proc = subprocess.run([sys.executable, str(script), "--config", str(cfg), "--checkpoint", str(checkpoint),
                           "--edf", str(edf), "--out", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "[0001]" in proc.stdout and "TST" in proc.stdout and "Results at:" in proc.stdout
    (run_dir,) = list((tmp_path / "out").iterdir())
    assert json.loads((run_dir / "result.json").read_text())["nights"][0]["subject_id"] == "0001"
    code = subprocess.run([sys.executable, "-c", "from sleepppg.runtime import keep_freed_memory as k; print(k())"],
                          cwd=script.parent, capture_output=True, text=True, timeout=120)
    import platform

    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"  # mallopt exists only in glibc
    assert code.returncode == 0 and code.stdout.strip() == expected


# ----------------------------------------------------------------------------------------------------------
# Hostile inputs and result.json as a newcomer reads it


def write_damaged_edf(path: Path, minutes: float, mode: str, share: float, fs: int = 256) -> Path:
    """A pulse-like PPG where `share` of the 1-min blocks hold the channel's physical maximum ("saturated")
    or its minimum written as a dropout marker ("dropout")."""
    from edfio import Edf, EdfSignal

    rng = np.random.default_rng(0)
    n = int(minutes * 60 * fs)
    t = np.arange(n) / fs
    phase = 2 * np.pi * np.cumsum(1.1 + 0.1 * np.sin(2 * np.pi * t / 600)) / fs
    ppg = np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.05 * rng.standard_normal(n)
    block = 60 * fs
    for b in rng.choice(n // block, int(round(share * (n // block))), replace=False):
        ppg[b * block:(b + 1) * block] = 3.0 if mode == "saturated" else -3.0
    spo2 = 95 + rng.standard_normal(int(minutes * 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    Edf([EdfSignal(ppg, fs, label="Pleth", physical_range=(-3, 3)),
         EdfSignal(spo2, 1, label="SpO2", physical_range=(80, 110))], data_record_duration=1).write(path)
    return path


def test_edf_failures_at_any_step_are_listed_and_the_rest_is_kept(tmp_path, checkpoint, monkeypatch, capsys):
    """A file that breaks the reader (here an EDF header claiming 0 signals), a night whose outputs cannot be
    written, and saturated/dropout PPG among good nights."""
    edfs = tmp_path / "edfs"
    write_edf(edfs / "mesa-sleep-0001.edf", 20, seed=1)
    good = (edfs / "mesa-sleep-0001.edf").read_bytes()
    (edfs / "mesa-sleep-0002.edf").write_bytes(good[:252] + b"0   " + good[256:])  # n_signals = 0
    write_damaged_edf(edfs / "mesa-sleep-0003.edf", 20, "saturated", 0.3)
    write_damaged_edf(edfs / "mesa-sleep-0004.edf", 20, "dropout", 0.25)
    write_edf(edfs / "mesa-sleep-0005.edf", 20, seed=5)
    real_write_csv = sleepppg.outputs.write_csv

    def failing_write_csv(path, *args, **kwargs):
        if path.stem == "0005":
            raise OSError(28, "No space left on device")
        return real_write_csv(path, *args, **kwargs)

    monkeypatch.setattr(sleepppg.outputs, "write_csv", failing_write_csv)
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint)})
    code, result, run_dir = run(cfg, tmp_path / "out", "--edf", str(edfs))
    assert code == inf.EXIT_NIGHT_FAILED
    failed = {f["subject_id"]: f for f in result["failed"]}
    assert sorted(failed) == ["0002", "0005"] and result["n_nights_failed"] == 2
    assert failed["0002"]["file"] == str((edfs / "mesa-sleep-0002.edf").resolve())
    assert failed["0002"]["step"] == "reading" and "0 signals" in failed["0002"]["reason"]
    assert failed["0005"]["step"] == "writing outputs" and "No space left" in failed["0005"]["reason"]
    nights = {n["subject_id"]: n for n in result["nights"]}
    assert sorted(nights) == ["0001", "0003", "0004"] and result["n_nights_staged"] == 3
    assert nights["0001"]["warnings"] == [] and nights["0001"]["signal_quality"]["flat_share"] == 0
    assert nights["0003"]["signal_quality"]["flat_share"] == pytest.approx(0.3, abs=0.03)
    assert nights["0004"]["signal_quality"]["flat_share"] == pytest.approx(0.25, abs=0.03)
    for sid in ("0003", "0004"):  # the reader's warning (samples at the digital limits), then the quality's
        reader, flat = nights[sid]["warnings"]
        assert "sits at its digital limits" in reader and "is flat" in flat
        assert Path(nights[sid]["outputs"]["csv"]).is_file()
    out = capsys.readouterr().out
    assert "FAILED 0002" in out and "FAILED 0005" in out and out.count("WARNING:") == 4  # 2 per damaged night
    # result.json as a newcomer reads it: every path absolute and pointing at a file
    assert result["paths"] == "absolute" and result["result_format"] == RESULT_FORMAT
    for n in result["nights"]:
        for key in ("csv", "hypnogram"):
            assert Path(n["outputs"][key]).is_absolute() and Path(n["outputs"][key]).is_file()
        assert n["outputs"]["hypnogram_with_labels"] is None
        assert Path(n["source_file"]).is_file() and Path(n["cache_dir"]).is_dir()
    assert not (run_dir / "csv" / "0005" / "0005.csv").exists()


def test_damaged_cache_is_rebuilt(tmp_path, checkpoint, caplog):
    edf = write_edf(tmp_path / "edfs" / "mesa-sleep-0042.edf", 20)
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint)})
    assert run(cfg, tmp_path / "o0", "--edf", str(edf))[0] == 0
    cache = tmp_path / "cache" / "0042"
    npy, meta_path = cache / CACHE_WINDOWS_FILE, cache / CACHE_META_FILE
    pristine_npy, pristine_meta = npy.read_bytes(), meta_path.read_text()

    def flip_bytes():  # same size, same mtime: only the checksum can tell
        st = npy.stat()
        data = bytearray(pristine_npy)
        data[-4000:-3996] = b"\x00\x00\xc0\x7f"
        npy.write_bytes(bytes(data))
        os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))

    def huge_header():  # a valid header asking for 400 GB, then a few bytes
        with open(npy, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (10**8, SAMPLES_PER_WINDOW)})
            fh.write(b"\0" * 64)

    def garbled_header():
        npy.write_bytes(pristine_npy.replace(b"(40, 1024)", b"(40, 1024"))

    damages = {
        "checksum": flip_bytes,
        "float64": lambda: np.save(npy, np.zeros((N_WIN, SAMPLES_PER_WINDOW))),
        "header": huge_header,
        "garbled header": garbled_header,
        "truncated meta": lambda: meta_path.write_text(pristine_meta[:40]),
        "meta types": lambda: meta_path.write_text(pristine_meta.replace('"n_recorded_windows": 40',
                                                                        '"n_recorded_windows": "40"')),
        "no checksum": lambda: meta_path.write_text(json.dumps({k: v for k, v in json.loads(pristine_meta).items()
                                                                if k != "windows_sha256"})),
    }
    for i, (name, damage) in enumerate(damages.items()):
        npy.write_bytes(pristine_npy)
        meta_path.write_text(pristine_meta)
        damage()
        caplog.clear()
        code, result, _ = run(cfg, tmp_path / f"o{i + 1}", "--edf", str(edf))
        assert code == 0 and result["nights"][0]["cache_used"] is False, name
        assert any("rebuilding cache" in r.getMessage() for r in caplog.records), name
    code, result, _ = run(cfg, tmp_path / "o_last", "--edf", str(edf))
    assert code == 0 and result["nights"][0]["cache_used"] is True  # the rebuilt cache is valid

    # a cache folder that cannot be written: the night is staged anyway
    blocked = make_config(tmp_path, **{"inference.best_model": str(checkpoint),
                                       "inference.cache_root": str(tmp_path / "cache-file")})
    (tmp_path / "cache-file").write_text("not a folder")
    caplog.clear()
    code, result, _ = run(blocked, tmp_path / "o_blocked", "--edf", str(edf))
    assert code == 0 and result["n_nights_staged"] == 1
    assert any("cannot write the cache" in r.getMessage() for r in caplog.records)


def test_one_flipped_byte_in_the_cache_is_refused_and_rebuilt(tmp_path, checkpoint, caplog):
    """One bit of ppg_windows.npy flipped in its data part (header, size and mtime intact, every value still
    finite): the checksum in meta.json refuses it, the log names why, and the night is rebuilt and staged
    with the same probabilities."""
    edf = write_edf(tmp_path / "edfs" / "mesa-sleep-0042.edf", 20)
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint)})
    code, first, run1 = run(cfg, tmp_path / "o1", "--edf", str(edf))
    assert code == 0 and first["nights"][0]["cache_used"] is False
    npy = tmp_path / "cache" / "0042" / CACHE_WINDOWS_FILE
    pristine = npy.read_bytes()
    offset = npy_data_offset(npy) + 4 * (3 * SAMPLES_PER_WINDOW + 100)  # low mantissa byte of a window-3 sample
    assert npy_data_offset(npy) < offset < len(pristine)
    damaged = bytearray(pristine)
    damaged[offset] ^= 0x01
    st = npy.stat()
    npy.write_bytes(bytes(damaged))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    windows = np.load(npy)
    assert np.isfinite(windows).all() and windows.shape == (N_WIN, SAMPLES_PER_WINDOW)

    caplog.clear()
    code, second, run2 = run(cfg, tmp_path / "o2", "--edf", str(edf))
    assert code == 0 and second["n_nights_failed"] == 0 and second["nights"][0]["cache_used"] is False
    assert any("0042: rebuilding cache" in r.getMessage() and "does not match the checksum" in r.getMessage()
               for r in caplog.records)
    assert npy.read_bytes() == pristine  # rebuilt, byte for byte
    probs = [r[2:] for r in read_csv(run1 / "csv" / "0042" / "0042.csv")[1]]  # stage and probabilities
    assert [r[2:] for r in read_csv(run2 / "csv" / "0042" / "0042.csv")[1]] == probs
    code, third, _ = run(cfg, tmp_path / "o3", "--edf", str(edf))
    assert code == 0 and third["nights"][0]["cache_used"] is True  # the rebuilt cache is reused


def test_bad_checkpoints_are_one_line_exit_2(tmp_path, checkpoint, caplog):
    import torch

    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", 20)
    cfg = make_config(tmp_path)
    ckpt = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in ckpt["model_state_dict"].items() if v.is_floating_point())
    ckpt["model_state_dict"][name] = torch.full_like(ckpt["model_state_dict"][name], float("nan"))
    torch.save(ckpt, tmp_path / "nan.pth")
    for bad in ("nan.pth",):
        caplog.clear()
        code, _, _ = run(cfg, tmp_path / "out", "--checkpoint", str(tmp_path / bad), "--edf", str(edf))
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert code == inf.EXIT_SETUP and len(errors) == 1 and "\n" not in errors[0], bad
        assert bad in errors[0]
    assert not (tmp_path / "out").exists()


def test_setup_problems_and_ctrl_c(tmp_path, checkpoint, monkeypatch, caplog):
    edfs = tmp_path / "edfs"
    for sid in ("0001", "0002", "0003"):
        write_edf(edfs / f"mesa-sleep-{sid}.edf", 20, seed=int(sid))
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint), "inference.batch_size": 1})
    code = inf.main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--device", "tpu", "--edf", str(edfs)])
    assert code == inf.EXIT_SETUP
    (tmp_path / "afile").write_text("x")
    caplog.clear()
    code = inf.main(["--config", str(cfg), "--out", str(tmp_path / "afile"), "--device", "cpu", "--edf", str(edfs)])
    assert code == inf.EXIT_SETUP and any("is a file" in r.getMessage() for r in caplog.records)

    monkeypatch.setattr(sleepppg.staging, "stage_nights", interrupted_on_call(sleepppg.staging.stage_nights, 2))  # on the second batch
    code, result, run_dir = run(cfg, tmp_path / "out", "--edf", str(edfs))
    assert code == inf.EXIT_INTERRUPTED == 130
    assert result["interrupted"] is True and [n["subject_id"] for n in result["nights"]] == ["0001"]
    assert (run_dir / "csv" / "0001" / "0001.csv").is_file()  # what was staged before Ctrl-C is kept


def test_read_night_names_the_file_and_rows(tmp_path):
    import h5py

    import multimodal_dataset_aligned as mda

    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as f:
        f["ppg"] = np.arange(5 * SAMPLES_PER_WINDOW, dtype=np.float64).reshape(5, SAMPLES_PER_WINDOW)
        f["labels"] = np.array([0, 1, 2, 3, -1])
    with h5py.File(path, "r") as f:
        night = mda.read_night({"ppg": f}, 1, 3)
        assert night["ppg"].dtype == np.float32 and night["ppg"].shape == (3, SAMPLES_PER_WINDOW)
        assert night["ppg"][0, 0] == SAMPLES_PER_WINDOW and night["labels"].tolist() == [1, 2, 3]
        with pytest.raises(ValueError, match=r"p\.h5: rows 3\.\.5 asked for, but 'ppg' has 5 rows"):
            mda.read_night({"ppg": f}, 3, 3)


def test_flags_the_mode_does_not_read_are_refused_by_name(tmp_path, checkpoint, caplog):
    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", 20)
    out = tmp_path / "out"
    edf_cfg, hdf5_cfg = make_config(tmp_path), make_config(tmp_path, **{"inference.only_inference": False})
    for cfg, extra, message in ((edf_cfg, ["--edf", str(edf), "--column", "Pleth"], "--column applies to PPG mode"),
                                (edf_cfg, ["--edf", str(edf), "--fs", "64"], "--fs applies to PPG mode"),
                                (edf_cfg, ["--edf", str(edf), "--n-subjects", "2"], "--n-subjects applies to HDF5"),
                                (hdf5_cfg, ["--fs", "64"], "--fs applies to PPG mode (--ppg) only, not to HDF5")):
        caplog.clear()
        assert run(cfg, out, "--checkpoint", str(checkpoint), *extra)[0] == inf.EXIT_SETUP
        assert message in caplog.text, extra
    assert not out.exists()


def test_bdf_files_in_an_edf_folder_are_staged(tmp_path, checkpoint):
    from helpers import channels_for_raw_edf, write_raw_edf

    folder = tmp_path / "nights"
    folder.mkdir()
    write_edf(folder / "mesa-sleep-0001.edf", 20)
    write_raw_edf(folder / "mesa-sleep-0002.BDF", channels_for_raw_edf(seconds=20 * 60, bdf=True), bdf=True)
    code, result, _ = run(make_config(tmp_path), tmp_path / "out", "--checkpoint", str(checkpoint),
                          "--edf", str(folder))
    assert code == 0 and sorted(n["subject_id"] for n in result["nights"]) == ["0001", "0002"]
    assert result["nights"][1]["n_epochs_staged"] == 40


def test_every_night_gets_a_pulse_figure_and_a_warning_where_it_is_no_ppg(tmp_path, checkpoint, capsys):
    """--ppg nights as a user may hand them over: the synthetic cohort's Pleth, and its EKG (a column or label
    that picks the ECG): result.json's signal_quality and warnings, and the CSV's pulse column. (White noise
    and damaged traces: tests/test_quality.py.)"""
    ppg, ecg, heart_rate = synthetic_night(20)
    nights = tmp_path / "nights"
    nights.mkdir()
    np.save(nights / "pleth.npy", ppg)
    np.save(nights / "ekg.npy", ecg)
    cfg = make_config(tmp_path, **{"inference.best_model": str(checkpoint), "inference.save_graph": False})
    code, result, run_dir = run(cfg, tmp_path / "out", "--ppg", str(nights), "--fs", "256")
    assert code == 0 and result["n_nights_staged"] == 2
    by_id = {n["subject_id"]: n for n in result["nights"]}
    pleth, ekg = by_id["pleth"]["signal_quality"], by_id["ekg"]["signal_quality"]
    assert pleth["pulse_share"] >= 0.85 and pleth["pulse_rate_bpm"] == pytest.approx(heart_rate, abs=2)
    assert by_id["pleth"]["warnings"] == []
    assert ekg["pulse_share"] <= 0.1 and ekg["ecg_like_share"] >= 0.5 and ekg["pulse_rate_bpm"] is None
    assert len(by_id["ekg"]["warnings"]) == 1
    assert "does not look like a PPG" in by_id["ekg"]["warnings"][0] and "ECG" in by_id["ekg"]["warnings"][0]
    assert "does not look like a PPG" in capsys.readouterr().out  # on the console too
    for sid, quality in (("pleth", pleth), ("ekg", ekg)):
        header, rows = read_csv(run_dir / "csv" / sid / f"{sid}.csv")
        assert header == list(CSV_COLUMNS) and header[-1] == "pulse" and len(rows) == N_WIN
        assert np.mean([int(r[-1]) for r in rows]) == pytest.approx(quality["pulse_share"])
