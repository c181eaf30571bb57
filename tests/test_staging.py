"""Tests for sleepppg.staging: the forward pass (softmax probabilities, folded BatchNorm) and the per-night
pipeline, whose one boundary turns a failure at any step of one night into a listed failure."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_tiny_checkpoint

import sleepppg.outputs
import sleepppg.staging
from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.errors import BadRecordingError
from sleepppg.nights import Night, NightJob
from sleepppg.staging import RunRecord, fold_batchnorm, predict_proba, run_pipeline

N_WIN = 40  # model span in tests: 40 x 30 s = 20 min


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth", N_WIN)


def test_predict_proba_is_a_softmax(checkpoint):
    from sleepppg.checkpoints import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(checkpoint)
    x = np.random.default_rng(1).standard_normal((2, N_WIN, SAMPLES_PER_WINDOW)).astype(np.float32)
    probs = predict_proba(model, x, torch.device("cpu"))
    assert probs.shape == (2, N_WIN, 4) and probs.dtype == np.float32
    assert np.allclose(probs.sum(-1), 1.0, atol=1e-5) and (probs > 0).all()
    with torch.no_grad():
        logits = model(torch.from_numpy(x).reshape(2, 1, -1))
    assert np.array_equal(probs.argmax(-1), logits.argmax(1).numpy())


def test_fold_batchnorm_keeps_outputs():
    from multimodal_sleep_model import SleepPPGNet

    torch.manual_seed(0)
    model = SleepPPGNet(n_windows=8).eval()
    for mod in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_()
            mod.bias.data.normal_()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.modules())
    x = torch.randn(2, 1, 8 * SAMPLES_PER_WINDOW)
    x_before = x.clone()
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4)
    assert torch.equal(x, x_before)  # the in-place activations never touch the input


# ----------------------------------------------------------------------------------------------------------
# The per-night boundary


def test_attempt_lists_any_exception_and_lets_ctrl_c_through(tmp_path):
    record = RunRecord()
    jobs = [NightJob("0001", tmp_path / "a.edf"), NightJob("0002", tmp_path / "b.edf")]
    assert record.attempt(jobs[:1], "reading", lambda: "night") == "night" and record.failed == []
    assert record.attempt(jobs, "staging", lambda: 1 / 0) is None

    def flat():
        raise BadRecordingError("flat", kind="flat_ppg")

    assert record.attempt(jobs[:1], "reading", flat) is None
    assert record.failed == [
        {"subject_id": "0001", "file": str((tmp_path / "a.edf").resolve()), "step": "staging",
         "kind": "ZeroDivisionError", "reason": "ZeroDivisionError: division by zero"},
        {"subject_id": "0002", "file": str((tmp_path / "b.edf").resolve()), "step": "staging",
         "kind": "ZeroDivisionError", "reason": "ZeroDivisionError: division by zero"},
        {"subject_id": "0001", "file": str((tmp_path / "a.edf").resolve()), "step": "reading",
         "kind": "flat_ppg", "reason": "BadRecordingError: flat"}]

    def ctrl_c():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record.attempt(jobs, "staging", ctrl_c)
    assert len(record.failed) == 3


def test_pipeline_lists_a_failure_at_each_step_and_stages_the_rest(tmp_path, monkeypatch):
    """Five nights through one pipeline: one whose reader raises an unexpected exception type, one whose
    result entry cannot be made, one whose CSV cannot be written; the other two are staged and written."""
    from multimodal_sleep_model import SleepPPGNet

    torch.manual_seed(0)
    model = fold_batchnorm(SleepPPGNet(n_windows=8))
    rng = np.random.default_rng(0)
    windows = {sid: rng.standard_normal((8, SAMPLES_PER_WINDOW)).astype(np.float32)
               for sid in ("0001", "0002", "0003", "0004", "0005")}

    def prepare(job: NightJob) -> Night:
        if job.subject_id == "0002":
            raise TypeError("the reader tripped over its own feet")
        return Night(job.subject_id, job.path, windows[job.subject_id], 8, False)

    real_entry, real_csv = sleepppg.staging.night_entry, sleepppg.outputs.write_csv

    def night_entry(night, probs_WC, pulse=None):
        if night.subject_id == "0003":
            raise IndexError("no entry for this night")
        return real_entry(night, probs_WC, pulse)

    def write_csv(path, *args, **kwargs):
        if path.stem == "0004":
            raise OSError(28, "No space left on device")
        return real_csv(path, *args, **kwargs)

    monkeypatch.setattr(sleepppg.staging, "night_entry", night_entry)
    monkeypatch.setattr(sleepppg.outputs, "write_csv", write_csv)
    jobs = [NightJob(sid, tmp_path / f"{sid}.edf") for sid in windows]
    record = RunRecord()
    run_pipeline(model, jobs, prepare, record, device=torch.device("cpu"), bf16=False, batch_size=2, workers=2,
                 run_dir=tmp_path / "run", flags={"save_csv": True, "save_graph": False})
    failed = {f["subject_id"]: (f["step"], f["kind"]) for f in record.failed}
    assert failed == {"0002": ("reading", "TypeError"), "0003": ("staging", "IndexError"),
                      "0004": ("writing outputs", "write_failed")}
    assert [n["subject_id"] for n in record.nights] == ["0001", "0005"]
    for entry in record.nights:
        assert Path(entry["outputs"]["csv"]).is_file() and entry["n_epochs_staged"] == 8
    assert not (tmp_path / "run" / "csv" / "0004" / "0004.csv").exists()

    # the same nights alone give the same probabilities (batching and failures around them change nothing)
    alone = predict_proba(model, windows["0005"][None], torch.device("cpu"))[0]
    csv_rows = (tmp_path / "run" / "csv" / "0005" / "0005.csv").read_text().splitlines()[1:]
    assert np.allclose([[float(v) for v in r.split(",")[7:11]] for r in csv_rows], alone, atol=1e-5)
