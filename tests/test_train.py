"""Tests of train_ppg_only.py on tiny processed files (tests/helpers.py), CPU only.

What is checked: class weights from every training label, the output layout and test_results.json, TensorBoard
scalars, self-describing checkpoints loadable with weights_only=True, resume equivalence (2 epochs + resume to
4 == 4 straight), DDP with 2 gloo processes over the whole test set, bad setup stopping with a message, a full
disk stopping with one line and --resume then completing, no mne import, and that a short run learns (test kappa
clearly above the majority-class baseline of 0). The loss is tested in test_loss.py, early stopping and checkpoint
writes in test_runstate.py.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers import interrupted_on_call, tmpfs_unavailable, write_processed

import sleepppg.distributed
import sleepppg.evaluation
import sleepppg.step
import train_ppg_only as T
from sleepppg.config import load_config
from sleepppg.distributed import autocast, inductor_cpp_compiler, use_autocast
from sleepppg.ids import sleepppg_test_subjects
from sleepppg.loss import class_weights_from_labels
from sleepppg.resume import newest_run_checkpoint
from sleepppg.runstate import HISTORY_KEYS
from sleepppg.trainingdata import training_class_weights

REPO = Path(__file__).resolve().parents[1]
W = 16  # windows per night in these tests (8 min): small enough for a CPU, long enough for the TCN
SCALAR_TAGS = ("Train/Loss", "Val/Loss", "Val/Overall_Accuracy", "Val/Overall_Kappa", "Val/Overall_F1",
               "Val/Median_Kappa", "Train/Learning_Rate", "Time/Epoch_Seconds", "Speed/Train_Nights_per_s")


def write_config(path: Path, data: dict, save_dir: Path, windows: int = W, report: bool = False, **training) -> Path:
    """A config file like configs/config_demo.yaml, pointing at `data`, sized for a test: whole nights and
    the learning-rate schedule these tests were measured with, whatever the demo uses; the validation report of
    the test nights only with `report` (it runs in a child process: seconds per run)."""
    cfg = yaml.safe_load((REPO / "configs" / "config_demo.yaml").read_text())
    cfg["evaluation"]["validation_report"] = report
    cfg["data"].update(ppg_file=data["ppg"], ecg_file=data["ecg"], index_file=data["index"], batch_size=4,
                       num_workers=0, windows_per_subject=windows)
    cfg["output"].update(save_dir=str(save_dir), save_frequency=2, save_intermediate=True)
    cfg["training"].update({"num_epochs": 2, "segment_windows": 0, "learning_rate": 0.001, "lr_factor": 0.7,
                            "lr_patience": 5, **training})
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_dirs(save_dir: Path) -> list[Path]:
    return sorted(p for p in save_dir.iterdir() if p.is_dir())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine extra threads only spin (and results stay the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_processed(tmp_path_factory.mktemp("processed"), n_subjects=12, windows_per_subject=W)


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    """4 epochs in one go; reused by the layout, TensorBoard, checkpoint and resume tests."""
    root = tmp_path_factory.mktemp("straight")
    cfg = write_config(root / "cfg.yaml", data, root / "out", report=True)
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu", "--epochs", "4"]) == 0
    (run_dir,) = run_dirs(root / "out")
    return run_dir


# ----------------------------------------------------------------------------------------------------------
# Class weights from the training nights


def test_class_weights_use_every_training_label(data, tmp_path):
    import multimodal_dataset_aligned as mda

    cfg = load_config(write_config(tmp_path / "cfg.yaml", data, tmp_path / "out"))
    train_ds = mda.PPGOnlyDataset(data, split="train", windows_per_subject=W)
    with h5py.File(data["ppg"]) as f:  # slow obvious version: every row of every training subject
        sids = f["subject_ids"][:].astype(str)
        labels = f["labels"][:][np.isin(sids, train_ds.subjects)]
    assert labels.size == len(train_ds.subjects) * W
    np.testing.assert_allclose(training_class_weights(cfg, train_ds), class_weights_from_labels(labels),
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# One run: layout, results, TensorBoard, checkpoints


def test_output_layout(straight_run):
    name = straight_run.name
    assert name.startswith("ppg_only_") and len(name) == len("ppg_only_YYYYmmdd_HHMMSS")
    ckpt = straight_run / "checkpoints"
    for rel in ("config.json", "best_model.pth", "last.pth", "checkpoint_epoch_2.pth", "checkpoint_epoch_4.pth"):
        assert (ckpt / rel).is_file(), rel
    assert not (ckpt / "checkpoint_epoch_3.pth").exists()  # save_frequency = 2
    assert not list(straight_run.rglob("*.tmp"))  # atomic writes leave no temporaries
    assert json.loads((ckpt / "config.json").read_text())["training"]["num_epochs"] == 4
    results = straight_run / "results"
    assert (results / "test_results.json").is_file()
    assert (results / "confusion_matrix_epoch_final.png").read_bytes()[:4] == b"\x89PNG"
    assert list(results.glob("confusion_matrix_epoch_[0-9]*.png"))  # save_intermediate: at each new best
    console = (straight_run / "console_logs" / f"{name}.log").read_text()
    epoch_lines = [ln for ln in console.splitlines() if "| train_loss " in ln]
    assert len(epoch_lines) == 4 and all("val_kappa" in ln and "nights/s" in ln for ln in epoch_lines)
    # the speed is printed to 3 significant digits (a CPU's 0.048 nights/s must not read 0.0)
    speeds = json.loads((results / "test_results.json").read_text())["timing"]["train_nights_per_s"]
    printed = [float(re.search(r"\| ([0-9.e+-]+) nights/s", ln).group(1)) for ln in epoch_lines]
    assert printed == pytest.approx(speeds, rel=5e-3)


def test_test_results_fields(straight_run, data):
    r = json.loads((straight_run / "results" / "test_results.json").read_text())
    for key in ("test_loss", "test_accuracy_overall", "test_kappa_overall", "test_f1_overall",
                "test_median_kappa"):
        assert isinstance(r[key], float) and math.isfinite(r[key]), key
    assert 0.0 <= r["test_accuracy_overall"] <= 1.0
    assert set(r["classification_report"]) >= {"accuracy", "weighted avg"}
    cm = np.array(r["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == r["n_test_epochs"]
    assert set(r["patient_kappa_stats"]) >= {"min", "max", "mean", "std", "median", "25_percentile",
                                             "75_percentile"}
    test_ids = [s for s in data["subjects"] if s in sleepppg_test_subjects()]
    assert sorted(r["test_subjects"]) == sorted(test_ids) and r["n_test_subjects"] == len(test_ids) == 3
    assert 1 <= r["best_epoch"] <= 4 and r["epochs_trained"] == 4
    history = r["training_history"]
    assert all(len(history[k]) == 4 for k in HISTORY_KEYS)
    assert r["best_epoch"] == int(np.argmin(history["val_losses"])) + 1  # best = lowest validation loss


def test_validation_report_of_the_test_nights(straight_run, data):
    import pandas as pd
    from sklearn.metrics import cohen_kappa_score

    results = straight_run / "results"
    tested = json.loads((results / "test_results.json").read_text())
    with h5py.File(data["ppg"]) as f:
        sids, labels = f["subject_ids"][:].astype(str), f["labels"][:]
    true_all, pred_all = [], []
    for sid in tested["test_subjects"]:
        night = pd.read_csv(results / "csv" / sid / f"{sid}.csv")
        labels_W = labels[sids == sid]
        last = int(np.flatnonzero(labels_W != -1)[-1])
        assert len(night) == last + 1  # rows stop at the last scored epoch
        scored = labels_W[:last + 1] != -1
        np.testing.assert_array_equal(night["true_idx"].to_numpy()[scored], labels_W[:last + 1][scored])
        probs = night[["p_wake", "p_light", "p_deep", "p_rem"]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
        assert (night["pred_idx"].to_numpy() == probs.argmax(axis=1)).all()
        true_all += labels_W[:last + 1][scored].tolist()
        pred_all += night["pred_idx"].to_numpy()[scored].tolist()
    assert cohen_kappa_score(true_all, pred_all) == pytest.approx(tested["test_kappa_overall"])
    report = results / "validation" / "report.md"
    assert f"# Validation report: {len(tested['test_subjects'])} nights" in report.read_text()
    # the report names the tested checkpoint: the file and its sha256, as test_results.json records them
    from sleepppg.checkpoints import file_sha256
    checkpoint = tested["checkpoint"]
    assert Path(checkpoint["path"]).name in ("best_model.pth", "last.pth")
    assert checkpoint["sha256"] == file_sha256(checkpoint["path"]) and checkpoint["epoch"] == tested["tested_epoch"]
    assert f"- Checkpoint: {checkpoint['path']} (sha256 {checkpoint['sha256']};" in report.read_text()
    agreement = pd.read_csv(results / "validation" / "epoch_agreement.csv", index_col=0)
    assert agreement.loc["pooled", "kappa"] == pytest.approx(tested["test_kappa_overall"], abs=1e-6)


def test_a_failed_validation_report_is_a_warning(data, tmp_path, caplog):
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", report=True, num_epochs=1)
    text = cfg.read_text().replace("metadata_file: ''", f"metadata_file: {str(tmp_path / 'none.csv')!r}")
    assert str(tmp_path / "none.csv") in text
    cfg.write_text(text)  # a metadata file that does not exist: the report stops (bad setup)
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"]) == 0
    assert "no validation report" in caplog.text and "none.csv" in caplog.text
    (run_dir,) = run_dirs(tmp_path / "out")
    assert (run_dir / "results" / "test_results.json").is_file()
    assert (run_dir / "results" / "csv").is_dir()
    assert not (run_dir / "results" / "validation" / "report.md").exists()


def test_tensorboard_scalars_and_images(straight_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(straight_run / "logs"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in SCALAR_TAGS:
        assert tag in tags["scalars"], tag
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3, 4], tag
    assert {"Val/Confusion_Matrix", "Val/Hypnogram"} <= set(tags["images"])
    assert (straight_run / "logs" / "hparams").is_dir()
    history = json.loads((straight_run / "results" / "test_results.json").read_text())["training_history"]
    np.testing.assert_allclose([e.value for e in acc.Scalars("Val/Loss")], history["val_losses"], rtol=1e-5)


def test_checkpoints_are_self_describing(straight_run):
    from sleepppg.checkpoints import load_model_from_checkpoint

    ckpt = torch.load(straight_run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["model_kind"] == "ppg_only" and ckpt["model_args"]["n_windows"] == W
    assert ckpt["epoch"] == 4 and ckpt["config"]["data"]["windows_per_subject"] == W
    for key in ("optimizer_state_dict", "scheduler_state_dict", "early_stopping", "rng_state", "history",
                "metrics", "class_weights"):
        assert key in ckpt, key
    model, best = load_model_from_checkpoint(straight_run / "checkpoints" / "best_model.pth",
                                             expected_kind="ppg_only")
    with torch.no_grad():
        logits_BCW = model(torch.randn(2, 1, W * 1024))
    assert logits_BCW.shape == (2, 4, W)
    assert not torch.allclose(logits_BCW.softmax(1).sum(1), logits_BCW.sum(1))  # logits, not probabilities


def test_both_models_two_runs_and_summary(data, tmp_path):
    """--model both --runs 2: PPG-only and PPG+ECG, seeds 43 and 44, one folder each, and a summary file."""
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=1)
    cfg.write_text(cfg.read_text().replace("fusion_strategy: attention", "fusion_strategy: concat"))
    assert T.main(["--config", str(cfg), "--model", "both", "--runs", "2", "--device", "cpu"]) == 0
    names = sorted(p.name.rsplit("_", 3)[0] + "_" + p.name.rsplit("_", 1)[1] for p in run_dirs(tmp_path / "out"))
    assert names == ["ppg_only_run1", "ppg_only_run2", "real_ecg_run1", "real_ecg_run2"]
    (summary_file,) = (tmp_path / "out").glob("summary_results_*.json")
    summary = json.loads(summary_file.read_text())
    assert summary["num_runs"] == 2 and summary["models"] == ["ppg_only", "real_ecg"]
    for kind in ("ppg_only", "real_ecg"):
        runs = summary["results"][kind]
        assert [r["seed"] for r in runs] == [43, 44]  # training.seed + run, as the reference
        kappas = [r["test_kappa_overall"] for r in runs]
        assert summary["summary"][kind]["test_kappa_overall"]["mean"] == pytest.approx(np.mean(kappas))
        assert summary["summary"][kind]["test_kappa_overall"]["median"] == pytest.approx(np.median(kappas))
    ecg_run = next(p for p in run_dirs(tmp_path / "out") if p.name.startswith("real_ecg"))
    # evaluation.validation_report: false: the test nights' CSVs for a later report, no report
    assert any((ecg_run / "results" / "csv").rglob("*.csv")) and not (ecg_run / "results" / "validation").exists()
    ckpt = torch.load(ecg_run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["model_kind"] == "real_ecg" and ckpt["model_args"]["fusion_strategy"] == "concat"


# ----------------------------------------------------------------------------------------------------------
# Learning


def test_short_run_learns(tmp_path):
    """6 epochs at the paper's learning rate on 48 synthetic nights of 8 min: test kappa > 0.15.

    Baseline: always predicting the majority class gives kappa 0. Why 0.15: the 16 test nights hold ~230
    scored epochs, so a label-blind predictor's kappa has a standard deviation of ~0.05 and 0.15 is ~3 SD
    above chance; a logistic regression on each window's spectrum reaches ~0.30 on this fixture (per-subject
    heart-rate offsets blur the stages), so 0.15 is half of that ceiling. Measured here: 0.32 (another data
    seed: 0.17). Batch 2 (16 steps per epoch) keeps BatchNorm's running statistics close to the weights.
    """
    data = write_processed(tmp_path / "data", n_subjects=48, windows_per_subject=W, n_test=16, seed=0)
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=6, learning_rate=2.5e-4)
    cfg.write_text(cfg.read_text().replace("batch_size: 4", "batch_size: 2").replace(
        "save_intermediate: true", "save_intermediate: false"))
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"]) == 0
    (run_dir,) = run_dirs(tmp_path / "out")
    r = json.loads((run_dir / "results" / "test_results.json").read_text())
    assert r["n_test_subjects"] == 16
    assert r["test_kappa_overall"] > 0.15, r["training_history"]
    history = r["training_history"]
    assert history["train_losses"][-1] < 0.5 * history["train_losses"][0]


# ----------------------------------------------------------------------------------------------------------
# Resume


def test_resume_equals_uninterrupted_run(straight_run, data, tmp_path, monkeypatch, caplog):
    """Killed during epoch 3, then --resume: same history, weights, optimizer and scheduler as 4 straight."""
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=4)
    real_train_one_epoch = T.train_one_epoch
    monkeypatch.setattr(T, "train_one_epoch", interrupted_on_call(real_train_one_epoch, 3))  # in epoch 3
    caplog.clear()
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"]) == 130  # Ctrl-C status
    monkeypatch.setattr(T, "train_one_epoch", real_train_one_epoch)
    (run_dir,) = run_dirs(tmp_path / "out")
    assert "keeps epoch 2" in caplog.text and f"--resume {run_dir}" in caplog.text  # says how to continue
    assert torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)["epoch"] == 2
    assert not (run_dir / "results" / "test_results.json").exists()
    assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 0
    assert run_dirs(tmp_path / "out") == [run_dir]  # continued in place

    a = torch.load(straight_run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    assert a["history"] == b["history"]
    assert a["early_stopping"] == b["early_stopping"]
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key
    for sa, sb in zip(a["optimizer_state_dict"]["state"].values(), b["optimizer_state_dict"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["scheduler_state_dict"] == b["scheduler_state_dict"]
    assert torch.equal(a["rng_state"][0]["torch"], b["rng_state"][0]["torch"])
    # the resumed run's TensorBoard log holds each epoch once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "logs"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("Val/Loss")] == [1, 2, 3, 4]


def test_resume_with_loader_workers_equals_uninterrupted_run(data, tmp_path, monkeypatch):
    """data.num_workers 1 (persistent worker processes, as config_cloud.yaml): a run stopped in epoch 3 and
    resumed ends with the same history and weights as 3 epochs in one go (the loaders' iterators, created at
    another epoch when resuming, must not draw from the RNG that dropout uses)."""
    def config(name):
        path = write_config(tmp_path / f"{name}.yaml", data, tmp_path / name, num_epochs=3)
        path.write_text(path.read_text().replace("num_workers: 0", "num_workers: 1"))
        return path

    assert T.main(["--config", str(config("straight")), "--model", "ppg_only", "--device", "cpu"]) == 0
    real_train_one_epoch = T.train_one_epoch
    monkeypatch.setattr(T, "train_one_epoch", interrupted_on_call(real_train_one_epoch, 3))
    assert T.main(["--config", str(config("resumed")), "--model", "ppg_only", "--device", "cpu"]) == 130
    monkeypatch.setattr(T, "train_one_epoch", real_train_one_epoch)
    (run_dir,) = run_dirs(tmp_path / "resumed")
    assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 0
    (straight,) = run_dirs(tmp_path / "straight")
    a = torch.load(straight / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["history"] == b["history"]
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key

def test_ctrl_c_while_checkpoints_are_written_names_the_epoch_saved(data, tmp_path, monkeypatch, caplog):
    """Ctrl-C while epoch 2's last.pth is written: the message names epoch 1 (what last.pth holds), and a
    Ctrl-C while a resumed run is set up still names its last.pth."""
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=3)
    real_save = T.save_checkpoint

    def interrupted_at_epoch_2(path, payload):
        if path.name == "last.pth" and payload["epoch"] == 2:
            raise KeyboardInterrupt
        return real_save(path, payload)

    monkeypatch.setattr(T, "save_checkpoint", interrupted_at_epoch_2)
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"]) == 130
    assert "last.pth keeps epoch 1" in caplog.text
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    (run_dir,) = run_dirs(tmp_path / "out")
    monkeypatch.setattr(T, "build_run", interrupted_on_call(T.build_run, 1))
    caplog.clear()
    assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 130
    assert "last.pth keeps epoch 1" in caplog.text and f"--resume {run_dir}" in caplog.text

def test_resume_refuses_a_checkpoint_outside_its_run_folder_before_writing(straight_run, tmp_path, caplog):
    """A run's own checkpoints carry its identity; its last.pth in a folder of no run, or copied into another
    run's folder, is refused (exit 2) and nothing is written or replaced."""
    import shutil

    identity = json.loads((straight_run / "checkpoints" / "run.json").read_text())["run_uid"]
    assert torch.load(straight_run / "checkpoints" / "last.pth", weights_only=True)["run_uid"] == identity
    loose = tmp_path / "downloads" / "myrun" / "last.pth"
    loose.parent.mkdir(parents=True)
    shutil.copy(straight_run / "checkpoints" / "last.pth", loose)
    fails(["--resume", str(loose), "--device", "cpu"], 2, "not inside a run folder", caplog)
    assert sorted(p.name for p in (tmp_path / "downloads").rglob("*")) == ["last.pth", "myrun"]
    other = tmp_path / "other_run"
    shutil.copytree(straight_run, other)
    (other / "checkpoints" / "run.json").write_text(json.dumps({"run_uid": "f" * 32, "model_kind": "ppg_only"}))
    best = (other / "checkpoints" / "best_model.pth").read_bytes()
    fails(["--resume", str(other), "--epochs", "5", "--device", "cpu"], 2,
          f"not a checkpoint of the run folder .*belongs to run {identity}, the run folder is run f{{32}}", caplog)
    assert (other / "checkpoints" / "best_model.pth").read_bytes() == best


def test_resume_without_path_takes_newest_run(straight_run, tmp_path):
    cfg = json.loads((straight_run / "checkpoints" / "config.json").read_text())
    save_dir = Path(cfg["output"]["save_dir"])
    assert newest_run_checkpoint(save_dir, "ppg_only") == straight_run / "checkpoints" / "last.pth"
    # nothing left to train (epoch 4 of 4): it only re-tests the best checkpoint
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert T.main(["--config", str(cfg_path), "--model", "ppg_only", "--resume", "--device", "cpu"]) == 0
    assert run_dirs(save_dir) == [straight_run]


# ----------------------------------------------------------------------------------------------------------
# Training on crops of nights (training.segment_windows)

SEGMENT = 4  # windows per training crop in these tests


@pytest.fixture(scope="module")
def segment_run(data, tmp_path_factory):
    """2 epochs on crops of SEGMENT windows, in one go (with activation checkpointing of the encoder)."""
    root = tmp_path_factory.mktemp("segments")
    cfg = write_config(root / "cfg.yaml", data, root / "out", segment_windows=SEGMENT, activation_checkpointing=True)
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"]) == 0
    (run_dir,) = run_dirs(root / "out")
    return run_dir


def test_segment_training_evaluates_whole_nights(segment_run, data):
    from sleepppg.checkpoints import load_model_from_checkpoint

    ckpt = torch.load(segment_run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["segment_windows"] == SEGMENT and ckpt["config"]["training"]["segment_windows"] == SEGMENT
    assert ckpt["model_args"]["n_windows"] == W  # inference rebuilds the whole-night model
    assert ckpt["config"]["training"]["activation_checkpointing"] and ckpt["model_args"]["tcn_causal"]
    r = json.loads((segment_run / "results" / "test_results.json").read_text())
    with h5py.File(data["ppg"]) as f:
        sids = f["subject_ids"][:].astype(str)
        labels = f["labels"][:]
    assert r["n_test_epochs"] == int(((labels >= 0) & np.isin(sids, r["test_subjects"])).sum())  # whole nights
    assert all(math.isfinite(v) for v in r["training_history"]["train_losses"] + r["training_history"]["val_losses"])
    model, _ = load_model_from_checkpoint(segment_run / "checkpoints" / "best_model.pth", expected_kind="ppg_only")
    with torch.no_grad():
        assert model(torch.randn(1, 1, W * 1024)).shape == (1, 4, W)


def test_segment_resume_equals_uninterrupted_run(segment_run, data, tmp_path, monkeypatch):
    """Killed during epoch 2, then --resume: the same crops, so the same weights as 2 epochs in one go."""
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", segment_windows=SEGMENT,
                       activation_checkpointing=True)
    real_train_one_epoch = T.train_one_epoch
    monkeypatch.setattr(T, "train_one_epoch", interrupted_on_call(real_train_one_epoch, 2))  # in epoch 2
    assert T.main(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"]) == 130
    monkeypatch.setattr(T, "train_one_epoch", real_train_one_epoch)
    (run_dir,) = run_dirs(tmp_path / "out")
    assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 0
    a = torch.load(segment_run / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["history"] == b["history"]
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key


# ----------------------------------------------------------------------------------------------------------
# The GPU recipe (bf16 autocast, torch.compile) through the same code paths on the CPU


def gpu_recipe_run(data, root: Path, **gpu) -> Path:
    """1 epoch of 1 step (7 training crops of SEGMENT windows in one batch), then --resume for a 2nd epoch."""
    cfg = yaml.safe_load(write_config(root / "cfg.yaml", data, root / "out", num_epochs=1,
                                      segment_windows=SEGMENT).read_text())
    cfg["data"]["batch_size"] = 8
    cfg["output"]["save_intermediate"] = False
    cfg["gpu"].update(gpu)
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert T.main(["--config", str(root / "cfg.yaml"), "--model", "ppg_only", "--device", "cpu"]) == 0
    (run_dir,) = run_dirs(root / "out")
    assert T.main(["--resume", str(run_dir), "--epochs", "2", "--device", "cpu"]) == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["gpu"] == cfg["gpu"]
    history = ckpt["history"]
    assert all(math.isfinite(v) for v in history["train_losses"] + history["val_losses"]), history
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model_state_dict"])  # plain weights
    return run_dir


def test_bf16_autocast_on_cpu_trains_saves_and_resumes(data, tmp_path, monkeypatch):
    contexts = []

    def recording_autocast(device, enabled):
        contexts.append(autocast(device, enabled))
        return contexts[-1]

    monkeypatch.setattr(sleepppg.step, "autocast", recording_autocast)  # the training steps
    monkeypatch.setattr(sleepppg.evaluation, "autocast", recording_autocast)  # validation and test
    gpu_recipe_run(data, tmp_path, mixed_precision=True, mixed_precision_on_cpu=True)
    assert contexts and all(isinstance(c, torch.autocast) and c.device == "cpu" and c.fast_dtype == torch.bfloat16
                            for c in contexts)
    # without mixed_precision_on_cpu the CPU stays in fp32, as before
    cfg = {"gpu": {"mixed_precision": True, "mixed_precision_on_cpu": False}}
    assert not use_autocast(cfg, torch.device("cpu")) and use_autocast(cfg, torch.device("cuda"))


@pytest.mark.skipif(inductor_cpp_compiler() is None,
                    reason="torch.compile on the CPU needs the C++ compiler torch looks for ($CXX, g++, clang++)")
@pytest.mark.skipif(os.environ.get("SLEEPPPG_COMPILE_TESTS") != "1",
                    reason="slow (compiles 3 graphs: 2-8 min on 2 cores); run with SLEEPPPG_COMPILE_TESTS=1")
def test_torch_compile_on_cpu_trains_saves_and_resumes(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not shared with other processes
    gpu_recipe_run(data, tmp_path, compile=True, mixed_precision=False)


def test_compile_without_a_cpp_compiler_stops_at_once(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(sleepppg.distributed, "inductor_cpp_compiler", lambda: None)
    cfg = yaml.safe_load(write_config(tmp_path / "cfg.yaml", data, tmp_path / "out").read_text())
    cfg["gpu"]["compile"] = True
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    fails(["--config", str(tmp_path / "cfg.yaml"), "--model", "ppg_only", "--device", "cpu"], 2, "C\\+\\+ compiler",
          caplog)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# Bad setup


def fails(argv: list[str], status: int, pattern: str, caplog) -> str:
    """Run main(argv), check its exit status and that the log names the problem (one line); return the log."""
    caplog.clear()
    assert T.main(argv) == status, caplog.text[-2000:]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in caplog.text, caplog.text[-2000:]
    assert re.search(pattern, errors[0]), errors[0]
    return caplog.text


def test_bad_setup_stops_with_a_message(data, tmp_path, caplog):
    missing = dict(data, ppg=str(tmp_path / "nope.h5"))
    fails(["--config", str(write_config(tmp_path / "a.yaml", missing, tmp_path / "out")), "--model", "ppg_only",
           "--device", "cpu"], 2, "not found.*data.ppg_file", caplog)
    few = write_processed(tmp_path / "few", n_subjects=2, windows_per_subject=4, n_test=1)
    fails(["--config", str(write_config(tmp_path / "b.yaml", few, tmp_path / "out", windows=4)), "--model",
           "ppg_only", "--device", "cpu"], 2, "split", caplog)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no empty run folders left
    bad = tmp_path / "c.yaml"
    bad.write_text((tmp_path / "a.yaml").read_text().replace("save_intermediate: true", "save_intermediate: flase"))
    fails(["--config", str(bad), "--model", "ppg_only", "--device", "cpu"], 2, "config error.*save_intermediate",
          caplog)
    fails(["--config", str(tmp_path / "a.yaml"), "--resume", str(tmp_path / "no_such_run")], 2, "--resume", caplog)
    if not torch.cuda.is_available():
        fails(["--config", str(write_config(tmp_path / "d.yaml", data, tmp_path / "out")), "--model", "ppg_only",
               "--device", "cuda"], 2, "CUDA was asked for", caplog)
    too_long = write_config(tmp_path / "e.yaml", data, tmp_path / "out", segment_windows=W + 1)
    fails(["--config", str(too_long), "--model", "ppg_only", "--device", "cpu"], 2, "segment_windows", caplog)
    # family 10: the run folder's parent is a file
    (tmp_path / "a_file").write_text("x")
    blocked = write_config(tmp_path / "f.yaml", data, tmp_path / "a_file" / "out")
    fails(["--config", str(blocked), "--model", "ppg_only", "--device", "cpu"], 2,
          "cannot create a run folder: .*a_file is a file", caplog)


def test_cli_exits_non_zero_and_never_imports_mne(data, tmp_path):
    """A subprocess: a bad path exits 2 with the message; a real 1-epoch run leaves mne unimported."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    missing = write_config(tmp_path / "a.yaml", dict(data, index=str(tmp_path / "nope.h5")), tmp_path / "out")
    proc = subprocess.run([sys.executable, str(REPO / "train_ppg_only.py"), "--config", str(missing),
                           "--model", "ppg_only", "--device", "cpu"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "data.index_file" in proc.stderr and "Traceback" not in proc.stderr

    cfg = write_config(tmp_path / "b.yaml", data, tmp_path / "out")
    code = ("import sys, train_ppg_only as t\n"
            f"assert t.main(['--config', {str(cfg)!r}, '--model', 'ppg_only', '--device', 'cpu', '--epochs', '1'])"
            " == 0\n"
            "print('MNE_LOADED' if 'mne' in sys.modules else 'MNE_ABSENT')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "MNE_ABSENT"


# ----------------------------------------------------------------------------------------------------------
# DDP


def test_ddp_two_cpu_processes_cover_the_whole_test_set(data, tmp_path):
    """torchrun, 2 gloo processes: one run folder, and the 3 test nights (split 2+2 with one repeat) are all
    scored exactly once."""
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=1)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "train_ppg_only.py"), "--config", str(cfg), "--model", "ppg_only",
                           "--device", "cpu"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path / "out")
    r = json.loads((run_dir / "results" / "test_results.json").read_text())
    assert r["world_size"] == 2
    assert r["n_test_subjects"] == 3 and len(r["per_subject_kappa"]) + len(r["undefined_kappa_subjects"]) == 3
    with h5py.File(data["ppg"]) as f:
        sids = f["subject_ids"][:].astype(str)
        scored = int(((f["labels"][:] >= 0) & np.isin(sids, r["test_subjects"])).sum())
    assert r["n_test_epochs"] == scored  # every scored test epoch once: no share missing, no repeat counted
    ckpt = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert len(ckpt["rng_state"]) == 2 and not any(k.startswith("module.") for k in ckpt["model_state_dict"])


def test_ddp_nan_night_on_one_rank_stops_both_ranks(data, tmp_path):
    """2 gloo processes, one training night with a NaN (read by one rank only): both processes exit with status 1
    within the timeout (neither is left waiting in the gradient sync), and rank 0's one error line names it.
    Started as torchrun would start them (RANK, WORLD_SIZE, MASTER_*), to read each process's own status."""
    import socket

    sid, row = first_train_subject(data)
    bad = copy_data(data, tmp_path / "nan")
    with h5py.File(bad["ppg"], "r+") as f:  # in an unscored window, which the pre-flight sample leaves out
        f["ppg"][row + W - 1, 10] = np.nan
        f["labels"][row + W - 1] = -1
    cfg = write_config(tmp_path / "cfg.yaml", bad, tmp_path / "out", num_epochs=1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(REPO / "train_ppg_only.py"), "--config", str(cfg),
                                       "--model", "ppg_only", "--device", "cpu"], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [1, 1], [o[1][-2000:] for o in outs]
    errors = [line for line in outs[0][1].splitlines() if " ERROR " in line or line.startswith("ERROR")]
    assert len(errors) == 1, outs[0][1][-3000:]
    assert re.search(rf"epoch 1/1, step \d+: subject {sid}: NaN or infinite PPG", errors[0]), errors[0]
    assert "Traceback" not in outs[0][1] + outs[1][1]


# ----------------------------------------------------------------------------------------------------------
# Hostile inputs: bad data, divergence, changed setup on resume, broken checkpoints


def copy_data(data: dict, folder: Path) -> dict:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    out = dict(data)
    for key in ("ppg", "ecg", "index"):
        out[key] = str(shutil.copy(data[key], folder / Path(data[key]).name))
    return out


def first_train_subject(data: dict) -> tuple[str, int]:
    """A training subject and the first row of its night."""
    import multimodal_dataset_aligned as mda

    sid = mda.make_split(data["index"], W).train[0]
    return sid, int(mda.read_night_starts(data["index"], [sid], W)[0])


def test_bad_data_stops_naming_the_subject(data, tmp_path, caplog):
    sid, row = first_train_subject(data)
    cases = {  # what is broken -> what the one error line must say
        "label": (lambda f: f["labels"].__setitem__(row + 3, 7), f"subject {sid}: label 7"),
        "ids": (lambda f: f["subject_ids"].__setitem__(row + 5, b"9999"), f"subject {sid}: the index puts it at rows"),
        # in an unscored window, which the pre-flight sample of scored rows leaves out: found in the step
        "nan": (lambda f: (f["ppg"].__setitem__((row + W - 1, 10), np.nan), f["labels"].__setitem__(row + W - 1, -1)),
                f"subject {sid}: NaN or infinite PPG"),
        "x250": (lambda f: f["ppg"].__setitem__(slice(row, row + W), f["ppg"][row:row + W] * 250),
                 f"over the windows with signal): {sid} mean"),
        "zero": (lambda f: f["ppg"].__setitem__(slice(row, row + W), np.zeros((W, 1024), np.float32)),
                 f"whose PPG is all zeros: ['{sid}']"),
    }
    for name, (corrupt, message) in cases.items():
        bad = copy_data(data, tmp_path / name)
        with h5py.File(bad["ppg"], "r+") as f:
            corrupt(f)
        cfg = write_config(tmp_path / f"{name}.yaml", bad, tmp_path / f"out_{name}", num_epochs=1)
        text = fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 1, re.escape(message), caplog)
        if name != "nan":  # found before any run folder is made
            assert not (tmp_path / f"out_{name}").exists()
        else:  # found in the step that reads it, in epoch 1: nothing to resume, and it says so
            assert "nothing to resume" in text


def test_swapped_subject_ids_are_found(data, tmp_path, caplog):
    """Two nights whose IDs were swapped in the data file (the index still points at the old rows)."""
    import multimodal_dataset_aligned as mda

    bad = copy_data(data, tmp_path / "swapped")
    split = mda.make_split(bad["index"], W)
    a, b = split.train[0], split.val[0]
    rows = {s: int(r) for s, r in zip((a, b), mda.read_night_starts(bad["index"], [a, b], W))}
    with h5py.File(bad["ppg"], "r+") as f:
        f["subject_ids"][rows[a]:rows[a] + W] = b.encode()
        f["subject_ids"][rows[b]:rows[b] + W] = a.encode()
    cfg = write_config(tmp_path / "cfg.yaml", bad, tmp_path / "out", num_epochs=1)
    fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 1, "2 subject\\(s\\) disagree", caplog)


def test_truncated_or_non_hdf5_files_are_one_line(data, tmp_path, caplog):
    for name, damage in (("truncated", lambda b: b[:len(b) // 2]), ("not_hdf5", lambda b: b"just some text\n")):
        bad = copy_data(data, tmp_path / name)
        path = Path(bad["index"])
        path.write_bytes(damage(path.read_bytes()))
        cfg = write_config(tmp_path / f"{name}.yaml", bad, tmp_path / "out")
        fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 2,
              "data.index_file = .* is not a readable HDF5 file", caplog)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, caplog):
    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=3)
    real_loss, calls = sleepppg.step.masked_cross_entropy, []

    def nan_from_epoch_2(logits_BCW, labels_BW, class_weights_C=None):
        calls.append(1)
        loss_sum, n_valid = real_loss(logits_BCW, labels_BW, class_weights_C)
        return (loss_sum * float("nan") if len(calls) > 2 else loss_sum), n_valid  # 2 steps per epoch

    monkeypatch.setattr(sleepppg.step, "masked_cross_entropy", nan_from_epoch_2)
    fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 1,
          "epoch 2/3, step 1: the loss is nan.*keeps epoch 1", caplog)
    (run_dir,) = run_dirs(tmp_path / "out")
    for name in ("last.pth", "best_model.pth"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt["model_state_dict"].values() if v.is_floating_point())


def test_resume_anyway_trains_on_the_new_settings(data, tmp_path, caplog):
    """--resume-anyway with a new learning rate, weight decay and schedule: the resumed epochs use them (the
    optimizer and scheduler states restored from last.pth carried the old ones); the figure that picked
    best_model.pth cannot change on resume."""
    cfg_path = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=1)
    assert T.main(["--config", str(cfg_path), "--model", "ppg_only", "--device", "cpu"]) == 0
    (run_dir,) = run_dirs(tmp_path / "out")
    changed = yaml.safe_load(cfg_path.read_text())
    changed["training"].update(learning_rate=0.0002, weight_decay=0.001, lr_factor=0.25, num_epochs=2)
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert T.main(["--config", str(tmp_path / "changed.yaml"), "--resume", str(run_dir), "--resume-anyway",
                   "--device", "cpu"]) == 0
    last = torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert last["history"]["learning_rates"] == [0.001, 0.0002]
    assert last["optimizer_state_dict"]["param_groups"][0]["weight_decay"] == 0.001
    assert last["scheduler_state_dict"]["factor"] == 0.25
    changed["training"].update(select_best_by="val_kappa", num_epochs=3)
    (tmp_path / "other_figure.yaml").write_text(yaml.safe_dump(changed))
    fails(["--config", str(tmp_path / "other_figure.yaml"), "--resume", str(run_dir), "--resume-anyway",
           "--device", "cpu"], 2, "cannot resume .* training.select_best_by 'val_kappa'.*chosen by 'val_loss'", caplog)

def test_resume_refuses_a_changed_setup_and_survives_a_broken_checkpoint(data, tmp_path, caplog):
    own = copy_data(data, tmp_path / "data")
    cfg_path = write_config(tmp_path / "cfg.yaml", own, tmp_path / "out", num_epochs=1)
    assert T.main(["--config", str(cfg_path), "--model", "ppg_only", "--device", "cpu"]) == 0
    (run_dir,) = run_dirs(tmp_path / "out")
    ckpt_dir = run_dir / "checkpoints"
    # family 6: a config key that shapes training changed -> refused, naming it
    changed = yaml.safe_load(cfg_path.read_text())
    changed["training"]["learning_rate"] = 0.5
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    fails(["--config", str(tmp_path / "changed.yaml"), "--resume", str(run_dir), "--device", "cpu"], 2,
          "refusing to resume.*config training.learning_rate: 0.001 -> 0.5.*--resume-anyway", caplog)
    # the data file was rewritten since -> refused, naming the file
    Path(own["index"]).write_bytes(Path(data["index"]).read_bytes())
    os.utime(own["index"], ns=(1, 1))
    fails(["--resume", str(run_dir), "--device", "cpu"], 2, "refusing to resume.*data.index_file changed", caplog)
    # family 3: last.pth truncated -> the newest intact checkpoint (best_model.pth) is used, and it says so;
    # --resume-anyway accepts the changed data file (a warning names it)
    last = ckpt_dir / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])
    caplog.clear()
    assert T.main(["--resume", str(run_dir), "--resume-anyway", "--epochs", "2", "--device", "cpu"]) == 0
    assert "resuming from the newest intact checkpoint instead" in caplog.text and "best_model.pth" in caplog.text
    assert "--resume-anyway: continuing although data.index_file changed" in caplog.text
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2
    # every checkpoint broken -> one line, exit 2
    for path in ckpt_dir.glob("*.pth"):
        path.write_bytes(b"\x00" * 10)
    fails(["--resume", str(run_dir), "--device", "cpu"], 2, "truncated or corrupt.*no other intact checkpoint",
          caplog)


# ----------------------------------------------------------------------------------------------------------
# A full disk: one line (exit 2), the previous checkpoints intact, and --resume completes


def no_space_after(n_writes: int, real):
    """A stand-in for checkpoints.atomic_output: the first `n_writes` checkpoints are written, every later one
    fails as torch.save fails on a full disk (half the bytes in the temporary file, then torch's RuntimeError
    raised while handling the OSError ENOSPC of the write)."""
    import contextlib
    import errno

    calls = [0]

    @contextlib.contextmanager
    def atomic_output(path):
        calls[0] += 1
        with real(path) as tmp:
            yield tmp
            if calls[0] > n_writes:
                tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
                try:
                    raise OSError(errno.ENOSPC, "No space left on device")
                except OSError:
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    return atomic_output


def assert_intact_checkpoints(run_dir: Path, epoch: int) -> None:
    """No temporary is left, and every checkpoint under a final name loads whole (last.pth at `epoch`)."""
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob(".*.tmp"))
    for path in (run_dir / "checkpoints").glob("*.pth"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # raises on a truncated file
        assert ckpt["epoch"] <= epoch, path
    assert torch.load(run_dir / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)["epoch"] == epoch


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line_and_resume_completes(data, tmp_path, monkeypatch,
                                                                                    caplog):
    import sleepppg.checkpoints

    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=2)
    # epoch 1 writes best_model.pth and last.pth; the disk is full from the first write of epoch 2 (best_model.pth
    # on a new best, else checkpoint_epoch_2.pth)
    monkeypatch.setattr(sleepppg.checkpoints, "atomic_output", no_space_after(2, sleepppg.checkpoints.atomic_output))
    text = fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 2,
                 r"^disk full while writing .*checkpoints/(best_model|checkpoint_epoch_2)\.pth: checkpoints/last\.pth "
                 r"keeps epoch 1, "
                 r"the last one saved; free space on the disk, then continue with: python train_ppg_only\.py "
                 r"--resume ", caplog)
    assert "RuntimeError" not in text and "unexpected pos" not in text
    monkeypatch.undo()
    (run_dir,) = run_dirs(tmp_path / "out")
    assert_intact_checkpoints(run_dir, epoch=1)
    assert torch.load(run_dir / "checkpoints" / "best_model.pth", weights_only=True)["epoch"] == 1
    assert not (run_dir / "results" / "test_results.json").exists()

    assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 0
    assert_intact_checkpoints(run_dir, epoch=2)
    results = json.loads((run_dir / "results" / "test_results.json").read_text())
    assert results["epochs_trained"] == 2 and len(results["training_history"]["val_losses"]) == 2


def test_a_full_disk_while_the_results_are_written_is_one_line_and_resume_completes(data, tmp_path, monkeypatch,
                                                                                    caplog):
    import errno

    import sleepppg.evaluation

    def no_space(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = write_config(tmp_path / "cfg.yaml", data, tmp_path / "out", num_epochs=1)
    monkeypatch.setattr(sleepppg.evaluation, "write_json", no_space)
    fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 2,
          r"^disk full while writing .*results/test_results\.json: checkpoints/last\.pth keeps epoch 1.*--resume",
          caplog)
    monkeypatch.undo()
    (run_dir,) = run_dirs(tmp_path / "out")
    assert_intact_checkpoints(run_dir, epoch=1)
    assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 0  # nothing left to train: it tests
    assert json.loads((run_dir / "results" / "test_results.json").read_text())["epochs_trained"] == 1



def test_a_real_full_disk_is_one_line_and_resume_completes(straight_run, data, tmp_path, caplog):
    """The run folder on a tmpfs with room for two checkpoints (epoch 1's best_model.pth and last.pth): the
    first write of epoch 2 fills it. After the disk grows, --resume finishes the run."""
    reason = tmpfs_unavailable(tmp_path / "probe")
    if reason:
        pytest.skip(reason)
    checkpoint_bytes = (straight_run / "checkpoints" / "last.pth").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kb = (2 * checkpoint_bytes + 8_000_000) // 1024  # + 8 MB for TensorBoard, figures and logs
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)], check=True)
    try:
        cfg = write_config(tmp_path / "cfg.yaml", data, disk / "out", num_epochs=2)
        fails(["--config", str(cfg), "--model", "ppg_only", "--device", "cpu"], 2,
              r"^disk full while writing .*checkpoints/(best_model|checkpoint_epoch_2)\.pth: checkpoints/last\.pth "
              r"keeps epoch 1", caplog)
        (run_dir,) = run_dirs(disk / "out")
        assert_intact_checkpoints(run_dir, epoch=1)
        subprocess.run(["mount", "-o", f"remount,size={3 * size_kb}k", str(disk)], check=True)
        assert T.main(["--resume", str(run_dir), "--device", "cpu"]) == 0
        assert_intact_checkpoints(run_dir, epoch=2)
        assert (run_dir / "results" / "test_results.json").is_file()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
