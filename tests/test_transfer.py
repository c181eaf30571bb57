"""Tests for using the pipeline beyond MESA: the configurable test list (`training.test_subjects_file`),
fine-tuning from a trained checkpoint (`--init-from`, `--freeze-encoder`, also under torchrun) and the choice
of the validation figure that picks the best checkpoint (`training.select_best_by`).

The fine-tuning tests train a tiny parent (1 epoch, 8-window nights) and fine-tune it on other nights: the
validation loss before any step equals the parent's own on that validation set, frozen weights and BatchNorm
statistics stay bit-identical while the rest changes, a resumed run keeps its parent record, and a parent
that does not fit stops the run before a run folder exists."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, write_processed

import multimodal_dataset_aligned as mda
import train_ppg_only as T
from sleepppg.checkpoints import load_model_from_checkpoint
from sleepppg.config import CONFIG_SCHEMA, load_config
from sleepppg.distributed import DistContext
from sleepppg.errors import ConfigError
from sleepppg.evaluation import evaluate
from sleepppg.ids import sleepppg_test_subjects
from sleepppg.runstate import HISTORY_KEYS, TrainState

W = 8  # windows per night: tiny nights keep the tests fast


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 subjects: 2 from the SleepPPG-Net list and 9000..9007 (9003 a window short, so not valid)."""
    return write_processed(tmp_path_factory.mktemp("processed"), n_subjects=10, windows_per_subject=W, n_test=2,
                           short_subjects=("9003",))


def _config_file(tmp_path, data, **training) -> str:
    raw = yaml.safe_load((REPO / "configs" / "config_demo.yaml").read_text())
    raw["evaluation"]["validation_report"] = False  # the report has its own tests
    raw["data"].update(ppg_file=data["ppg"], ecg_file=data["ecg"], index_file=data["index"], windows_per_subject=W)
    raw["training"].update({"segment_windows": 0, **training})  # whole (tiny) nights
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ----------------------------------------------------------------------------------------------------------
# The test list of another cohort


def test_a_listed_cohort_sets_the_test_split_in_list_order(data, tmp_path):
    listed = tmp_path / "my_cohort_test.txt"
    listed.write_text("# held-out nights of my cohort\n9005\n\n9001  # a comment\n9003\n7777\n9005\n")
    ids = mda.read_test_subjects(listed)
    assert ids == ["9005", "9001", "9003", "7777"]  # comments, blanks and the repeat dropped; order kept
    split = mda.make_split(data["index"], W, use_sleepppg_test_set=True, seed=42, test_subjects=ids)
    assert split.test == ["9005", "9001"]  # 9003 is too short, 7777 absent
    assert split.missing_test == ["9003", "7777"]
    assert set(split.train) | set(split.val) == set(split.valid) - {"9005", "9001"}
    assert not set(split.train) & set(split.val)
    # the SleepPPG-Net IDs of this cohort are now ordinary training/validation subjects
    assert set(data["subjects"][:2]) & set(sleepppg_test_subjects()) <= set(split.train) | set(split.val)
    # the datasets use the same list
    loaders = mda.get_dataloaders({k: data[k] for k in ("ppg", "index")}, windows_per_subject=W,
                                  test_subjects=ids)
    assert loaders[5].subjects == ["9005", "9001"] and sorted(loaders[3].subjects) == sorted(split.train)


def test_the_default_key_is_the_sleepppg_list_from_any_directory(data, tmp_path, monkeypatch):
    cfg = load_config(_config_file(tmp_path, data))
    assert cfg["training"]["test_subjects_file"] == "data/sleepppg_net_test_subjects.txt"
    monkeypatch.chdir(tmp_path)  # no data/ folder here: the repository's list is used
    assert mda.test_subjects_from_config(cfg) == sleepppg_test_subjects()
    split_default = mda.make_split(data["index"], W, True, 42)
    assert mda.make_split(data["index"], W, True, 42, mda.test_subjects_from_config(cfg)) == split_default


def test_a_config_without_the_key_still_loads(data, tmp_path):
    raw = yaml.safe_load(open(_config_file(tmp_path, data)))
    del raw["training"]["test_subjects_file"]
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(raw))
    assert mda.test_subjects_from_config(load_config(old)) == sleepppg_test_subjects()


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_a_missing_or_empty_list_is_a_setup_error_naming_key_and_path(data, tmp_path, content, capsys):
    listed = tmp_path / "list.txt"
    if content is not None:
        listed.write_text(content)
    cfg = load_config(_config_file(tmp_path, data, test_subjects_file=str(listed)))
    with pytest.raises(ConfigError, match=r"training\.test_subjects_file = .*list\.txt: "
                                          r"(file not found|the file lists no subject ID)"):
        mda.test_subjects_from_config(cfg)
    assert mda.main(["--config", _config_file(tmp_path, data, test_subjects_file=str(listed))]) == 2
    assert "training.test_subjects_file" in capsys.readouterr().err


def test_the_random_split_reads_no_list(data, tmp_path):
    cfg = load_config(_config_file(tmp_path, data, use_sleepppg_test_set=False,
                                   test_subjects_file=str(tmp_path / "absent.txt")))
    assert mda.test_subjects_from_config(cfg) is None
    split = mda.make_split(data["index"], W, False, 7, None)
    assert split == mda.make_split(data["index"], W, False, 7, ["9000", "9001"])  # the list plays no part
    assert split.missing_test == [] and len(split.valid) == 9


def test_cli_prints_the_listed_ids_that_are_missing(data, tmp_path, capsys):
    listed = tmp_path / "list.txt"
    listed.write_text("9002\n9003\nABC-12\n")
    assert mda.main(["--config", _config_file(tmp_path, data, test_subjects_file=str(listed))]) == 0
    out = capsys.readouterr().out
    assert f"test list {listed}: 1 of 3 IDs present; missing: 2" in out
    assert f"missing IDs (not in the index, or not {W} windows long): 9003, ABC-12" in out
    assert "train 6, val 2, test 1" in out


# ----------------------------------------------------------------------------------------------------------
# Best checkpoint by a chosen validation figure (training.select_best_by)


def _epochs(state, rows, patience=5):
    """Record epochs with (val loss, val kappa, val median kappa); returns which ones improved."""
    values = dict.fromkeys(HISTORY_KEYS, 0.5)
    timing = {"epoch_seconds": 1.0, "train_nights_per_s": 1.0}
    return [state.record_epoch(e, {**values, "val_losses": loss, "val_overall_kappas": kappa,
                                   "val_median_kappas": median}, timing, patience)
            for e, (loss, kappa, median) in enumerate(rows, start=1)]


ROWS = [(1.0, 0.30, 0.40), (0.8, 0.25, 0.45), (0.9, 0.50, float("nan")), (0.85, 0.45, 0.42)]


@pytest.mark.parametrize("select, improved, best_epoch, best_value", [
    ("val_loss", [True, True, False, False], 2, 0.8),  # lower is better
    ("val_kappa", [True, False, True, False], 3, 0.50),  # higher is better
    ("val_median_kappa", [True, True, False, False], 2, 0.45),  # a NaN never improves
])
def test_the_chosen_figure_decides_best_and_early_stopping(select, improved, best_epoch, best_value):
    state = TrainState(select_best_by=select)
    assert _epochs(state, ROWS, patience=2) == improved
    assert (state.best_epoch, state.best_value) == (best_epoch, best_value)
    assert state.best_val_loss == ROWS[best_epoch - 1][0]  # the loss of the best epoch, whatever decides
    assert state.bad_epochs == 4 - best_epoch and state.stopped == (4 - best_epoch >= 2)
    saved = state.to_checkpoint()
    assert saved["early_stopping"]["select_best_by"] == select
    assert TrainState.from_checkpoint(saved) == state


def test_a_checkpoint_from_before_select_best_by_follows_the_loss():
    state = TrainState()
    _epochs(state, ROWS[:2])
    saved = state.to_checkpoint()
    for key in ("select_best_by", "best_value"):
        del saved["early_stopping"][key]
    restored = TrainState.from_checkpoint(saved)
    assert (restored.select_best_by, restored.best_value, restored.best_epoch) == ("val_loss", 0.8, 2)


# ----------------------------------------------------------------------------------------------------------
# Tiny training runs: a parent, then fine-tuning runs on another cohort


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: extra threads only spin
    yield
    torch.set_num_threads(before)


def _train(cfg_file, *extra) -> Path:
    """Run train_ppg_only (PPG only, CPU) and return the new run folder."""
    save_dir = Path(yaml.safe_load(Path(cfg_file).read_text())["output"]["save_dir"])
    before = set(save_dir.iterdir()) if save_dir.is_dir() else set()
    assert T.main(["--config", str(cfg_file), "--model", "ppg_only", "--device", "cpu", *extra]) == 0
    (run_dir,) = set(save_dir.iterdir()) - before
    return run_dir


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _run_config(tmp_path, data, name, **training) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "config_demo.yaml").read_text())
    raw["evaluation"]["validation_report"] = False  # the report has its own tests
    raw["data"].update(ppg_file=data["ppg"], ecg_file=data["ecg"], index_file=data["index"], windows_per_subject=W,
                       batch_size=4, num_workers=0)
    raw["output"].update(save_dir=str(tmp_path / "out"), save_frequency=1, save_intermediate=False)
    raw["training"].update({"num_epochs": 1, "use_sleepppg_test_set": False, "segment_windows": 0, **training})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_select_best_by_kappa_decides_the_best_checkpoint_and_survives_resume(data, tmp_path):
    cfg = _run_config(tmp_path, data, "kappa", num_epochs=2, select_best_by="val_kappa")
    run_dir = _train(cfg)
    assert T.main(["--resume", str(run_dir), "--epochs", "3", "--device", "cpu"]) == 0
    results = json.loads((run_dir / "results" / "test_results.json").read_text())
    kappas = results["training_history"]["val_overall_kappas"]
    assert results["select_best_by"] == "val_kappa" and len(kappas) == 3
    assert results["best_epoch"] == int(np.nanargmax(kappas)) + 1
    best = _load(run_dir / "checkpoints" / "best_model.pth")
    assert best["epoch"] == results["best_epoch"]
    assert best["early_stopping"]["select_best_by"] == "val_kappa"
    assert best["early_stopping"]["best_value"] == pytest.approx(max(kappas))


def test_without_any_finite_validation_figure_the_last_checkpoint_is_tested(tmp_path):
    """Every night scored as one stage: kappa is undefined in every epoch, so no epoch is a best; the run
    still ends with test results, from last.pth, instead of failing to find best_model.pth."""
    import h5py

    one_stage = write_processed(tmp_path / "data", n_subjects=10, windows_per_subject=W, n_test=2)
    for key in ("ppg", "ecg"):
        with h5py.File(one_stage[key], "r+") as f:
            labels = f["labels"][()]
            labels[labels >= 0] = 1
            f["labels"][...] = labels
    run_dir = _train(_run_config(tmp_path, one_stage, "nan", num_epochs=2, select_best_by="val_kappa"))
    assert not (run_dir / "checkpoints" / "best_model.pth").exists()
    results = json.loads((run_dir / "results" / "test_results.json").read_text())
    assert results["best_epoch"] == 0 and results["tested_epoch"] == 2 and results["test_accuracy_overall"] > 0


@pytest.fixture(scope="module")
def other_cohort(tmp_path_factory):
    """The cohort fine-tuned on: other nights (another seed) of the same tiny length."""
    return write_processed(tmp_path_factory.mktemp("other"), n_subjects=10, windows_per_subject=W, n_test=2, seed=5)


@pytest.fixture(scope="module")
def parent(data, tmp_path_factory):
    """A model trained 1 epoch on `data`; returns its best_model.pth."""
    root = tmp_path_factory.mktemp("parent")
    run_dir = _train(_run_config(root, data, "parent"))
    return run_dir / "checkpoints" / "best_model.pth"


def _encoder(state):
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


def test_fine_tuning_starts_from_the_parent_and_records_it(parent, other_cohort, tmp_path):
    run_dir = _train(_run_config(tmp_path, other_cohort, "fine"), "--init-from", str(parent))
    sha = hashlib.sha256(parent.read_bytes()).hexdigest()
    last = _load(run_dir / "checkpoints" / "last.pth")
    record = last["parent_checkpoint"]
    assert (record["path"], record["sha256"], record["checkpoint_format"]) == (str(parent.resolve()), sha, "sleepppg")
    config = json.loads((run_dir / "checkpoints" / "config.json").read_text())
    assert config["training"]["init_from"] == str(parent) and config["training"]["init_from_sha256"] == sha
    results = json.loads((run_dir / "results" / "test_results.json").read_text())
    assert results["parent_checkpoint"]["sha256"] == sha
    assert sha.encode() in b"".join(p.read_bytes() for p in (run_dir / "logs").rglob("events.*"))  # hparams

    # the validation loss before any step is the parent's own on this validation set
    cfg = load_config(_run_config(tmp_path, other_cohort, "check"))
    loaders = mda.get_dataloaders(mda.data_paths_from_config(cfg), batch_size=4, windows_per_subject=W,
                                  use_sleepppg_test_set=False, seed=cfg["training"]["seed"], return_index=True)
    model, _ = load_model_from_checkpoint(parent)
    val, _ = evaluate(model, loaders[1], loaders[4].subjects, torch.device("cpu"), DistContext(), n_inputs=1,
                        amp=False, desc="parent")
    before = record["val_before_training"]
    assert before["loss"] == pytest.approx(val["loss"], rel=1e-6)
    assert before["kappa"] == pytest.approx(val["kappa"], rel=1e-6, abs=1e-9)


def test_a_frozen_encoder_does_not_change_while_the_rest_learns(parent, other_cohort, tmp_path):
    cfg = _run_config(tmp_path, other_cohort, "frozen", num_epochs=2)
    run_dir = _train(cfg, "--init-from", str(parent), "--freeze-encoder", "1")
    start = _load(parent)["model_state_dict"]
    after_1 = _load(run_dir / "checkpoints" / "checkpoint_epoch_1.pth")["model_state_dict"]
    after_2 = _load(run_dir / "checkpoints" / "checkpoint_epoch_2.pth")["model_state_dict"]
    # epoch 1 frozen: weights and BatchNorm running statistics exactly the parent's
    assert _encoder(start) and all(torch.equal(start[k], after_1[k]) for k in _encoder(start))
    head = [k for k in start if k.startswith("head.") and start[k].is_floating_point()]
    assert any(not torch.equal(start[k], after_1[k]) for k in head)
    # epoch 2 trains the encoder too
    assert any(not torch.equal(after_1[k], after_2[k]) for k in _encoder(start) if k.endswith("weight"))
    assert json.loads((run_dir / "checkpoints" / "config.json").read_text())["training"][
        "freeze_encoder_epochs"] == 1


def test_unfreezing_under_torchrun_rebuilds_ddp_in_every_process(parent, other_cohort, tmp_path):
    """2 gloo processes: epoch 1 trains with a frozen encoder (DDP must not expect its gradients), epoch 2
    re-wraps the model with the encoder trainable (a stale wrapper would stop the run waiting for the encoder's
    gradients, or leave it frozen)."""
    import os
    import subprocess
    import sys

    cfg = _run_config(tmp_path, other_cohort, "ddp", num_epochs=2)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "train_ppg_only.py"), "--config", str(cfg), "--model", "ppg_only",
                           "--device", "cpu", "--init-from", str(parent), "--freeze-encoder", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 2: the encoder is trained from now on" in proc.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    start = _load(parent)["model_state_dict"]
    after_1 = _load(run_dir / "checkpoints" / "checkpoint_epoch_1.pth")
    after_2 = _load(run_dir / "checkpoints" / "checkpoint_epoch_2.pth")
    assert after_2["world_size"] == 2
    assert all(torch.equal(start[k], after_1["model_state_dict"][k]) for k in _encoder(start))
    assert any(not torch.equal(after_1["model_state_dict"][k], after_2["model_state_dict"][k])
               for k in _encoder(start) if k.endswith("weight"))

def test_a_fine_tuning_run_resumes_with_its_own_yaml(parent, other_cohort, tmp_path):
    """The run writes its parent's sha256 into its config; the user's YAML still has init_from_sha256: "",
    which is no change of setup."""
    cfg = _run_config(tmp_path, other_cohort, "own", init_from=str(parent))
    run_dir = _train(cfg)
    assert T.main(["--config", str(cfg), "--resume", str(run_dir), "--epochs", "2", "--device", "cpu"]) == 0
    resumed = _load(run_dir / "checkpoints" / "last.pth")
    assert resumed["epoch"] == 2
    assert resumed["config"]["training"]["init_from_sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()

def test_freeze_for_the_whole_run_and_resume_keeps_the_parent(parent, other_cohort, tmp_path):
    cfg = _run_config(tmp_path, other_cohort, "all")
    run_dir = _train(cfg, "--init-from", str(parent), "--freeze-encoder")  # no N: every epoch
    first = _load(run_dir / "checkpoints" / "last.pth")
    assert first["config"]["training"]["freeze_encoder_epochs"] == -1
    assert T.main(["--resume", str(run_dir), "--epochs", "2", "--device", "cpu"]) == 0
    resumed = _load(run_dir / "checkpoints" / "last.pth")
    assert resumed["epoch"] == 2 and resumed["parent_checkpoint"] == first["parent_checkpoint"]
    start = _load(parent)["model_state_dict"]
    assert all(torch.equal(start[k], resumed["model_state_dict"][k]) for k in _encoder(start))
    results = json.loads((run_dir / "results" / "test_results.json").read_text())
    assert results["parent_checkpoint"]["sha256"] == first["parent_checkpoint"]["sha256"]


def test_a_parent_that_does_not_fit_stops_before_any_run_folder(parent, other_cohort, tmp_path, caplog):
    longer = write_processed(tmp_path / "longer", n_subjects=10, windows_per_subject=2 * W, n_test=2)
    cases = [] if "tcn_causal" not in CONFIG_SCHEMA["model"] else [  # the TCN option of the model module
        (_run_config(tmp_path, other_cohort, "acausal"), ["--init-from", str(parent)], "model.tcn_causal",
         {"model": {"tcn_causal": False}})]
    cases += [
        (_run_config(tmp_path, longer, "windows"), ["--init-from", str(parent)],
         f"nights of {W} windows, this run has data.windows_per_subject {2 * W}",
         {"data": {"windows_per_subject": 2 * W}}),
        (_run_config(tmp_path, other_cohort, "kind"), ["--init-from", str(parent), "--model", "real_ecg"],
         "'ppg_only' model but a 'real_ecg' model", {}),
        (_run_config(tmp_path, other_cohort, "nofile"), ["--init-from", str(tmp_path / "absent.pth")],
         "checkpoint not found", {}),
        (_run_config(tmp_path, other_cohort, "noparent"), ["--freeze-encoder"], "needs training.init_from", {}),
        (_run_config(tmp_path, other_cohort, "otherhash"), [], "but training.init_from_sha256 is " + "0" * 64,
         {"training": {"init_from": str(parent), "init_from_sha256": "0" * 64}}),
    ]
    for cfg_file, extra, message, changes in cases:
        raw = yaml.safe_load(cfg_file.read_text())
        for section, values in changes.items():
            raw[section].update(values)
        cfg_file.write_text(yaml.safe_dump(raw))
        argv = ["--config", str(cfg_file), "--device", "cpu"] + (extra if "--model" in extra else
                                                                 ["--model", "ppg_only", *extra])
        caplog.clear()
        assert T.main(argv) == 2  # bad setup
        assert message in caplog.text
        assert not (tmp_path / "out").exists()


