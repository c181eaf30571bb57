"""Checkpoints of both published versions of the reference, used as a user of each would: staged by
`inference_ppg_only.py` and taken as the parent of a fine-tuning run (`--init-from`), on a full 1,200-window
night. The re-created reference models (tests/reference_model.py) carry random weights and BatchNorm
statistics, so a wrong mapping of any tensor shows in the outputs."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO, write_processed
from reference_model import NAMINGS, RefMultiModalSleepNet, RefSleepPPGNet, randomize

import inference_ppg_only as inf
from multimodal_sleep_model import FUSION_STRATEGIES, build_model
from sleepppg.checkpoints import REFERENCE_VERSIONS
from sleepppg.config import load_config
from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.transfer import load_parent, run_model_args

FULL_NIGHT = 1200  # the reference's fixed night: 10 h of 30-s windows


def _training_checkpoint(ref: torch.nn.Module) -> dict:
    """What the reference's train_ppg_only.py saves as best_model.pth: weights, optimizer state, numpy-float
    metrics, its history and its config dict."""
    optimizer = torch.optim.Adam(ref.parameters(), lr=2.5e-4, weight_decay=1e-5)
    return {"epoch": 12, "model_state_dict": ref.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "best_validation_loss": np.float64(0.58), "best_overall_kappa": np.float64(0.66),
            "training_history": {"train_losses": [0.9, 0.7], "val_overall_kappas": [np.float64(0.6)]},
            "config": {"model_type": "ppg_only", "training": {"learning_rate": 2.5e-4}}}


def _save(ref: torch.nn.Module, path, bare: bool):
    torch.save(ref.state_dict() if bare else _training_checkpoint(ref), path)
    return path


@pytest.fixture(scope="module")
def full_night(tmp_path_factory):
    """Processed files with one SleepPPG-Net test subject of a full night (and two other subjects)."""
    return write_processed(tmp_path_factory.mktemp("full"), n_subjects=3, windows_per_subject=FULL_NIGHT, n_test=1)


@pytest.mark.parametrize("naming,bare", [("original", False), ("guide", False), ("guide", True)])
def test_inference_stages_a_reference_checkpoint_as_the_reference_would(tmp_path, full_night, naming, bare):
    ref = randomize(RefSleepPPGNet(FULL_NIGHT, naming=naming), seed=11).eval()
    ckpt = _save(ref, tmp_path / "best_model.pth", bare)
    cfg = load_config(REPO / "configs" / "config_demo.yaml", {
        "data.ppg_file": full_night["ppg"], "data.ecg_file": full_night["ecg"], "data.index_file": full_night["index"],
        "data.windows_per_subject": FULL_NIGHT, "inference.best_model": str(ckpt), "inference.only_inference": False,
        "inference.cache_root": str(tmp_path / "cache"), "inference.batch_size": 1, "gpu.mixed_precision": False})
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    code = inf.main(["--config", str(cfg_path), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 0
    run_dir = next((tmp_path / "out").iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["checkpoint"]["checkpoint_format"] == "reference"
    assert result["checkpoint"]["reference_version"] in REFERENCE_VERSIONS
    assert NAMINGS[naming][0] in result["checkpoint"]["reference_version"]
    (night,) = result["nights"]
    sid = night["subject_id"]
    import h5py
    with h5py.File(full_night["ppg"], "r") as f:
        rows = np.flatnonzero(f["subject_ids"][:] == sid.encode())
        x = torch.from_numpy(f["ppg"][rows].astype(np.float32).reshape(1, 1, FULL_NIGHT * SAMPLES_PER_WINDOW))
    with torch.no_grad():
        ref_probs = ref(x)[0].T.numpy()  # (W, C): the reference's own softmax output
    with open(run_dir / "csv" / sid / f"{sid}.csv", newline="") as f:
        table = list(csv.DictReader(f))
    staged = [int(r["epoch"]) for r in table if r["pred_idx"] != ""]
    ours = np.array([[float(r[c]) for c in table[0] if c.startswith("p_")] for r in table if r["pred_idx"] != ""])
    assert len(staged) > 1000 and ours.shape == (len(staged), 4)
    # the CSV holds 6 decimals; BatchNorm folded into the convolutions changes the last float bits
    assert np.abs(ours - ref_probs[staged]).max() <= 2e-6


@pytest.mark.parametrize("naming,fusion", [("original", None), ("guide", None)]
                         + [("guide", f) for f in FUSION_STRATEGIES] + [("original", "gated")])
def test_init_from_takes_a_reference_checkpoint_of_either_version(tmp_path, naming, fusion):
    ref = (RefSleepPPGNet(FULL_NIGHT, naming=naming) if fusion is None
           else RefMultiModalSleepNet(fusion, FULL_NIGHT, naming=naming))
    ref = randomize(ref, seed=3).eval()
    kind = "ppg_only" if fusion is None else "real_ecg"
    path = _save(ref, tmp_path / "best_model.pth", bare=fusion == "attention")
    overrides = {"training.init_from": str(path), "data.windows_per_subject": FULL_NIGHT}
    if fusion is not None:
        overrides["model.real_ecg.fusion_strategy"] = fusion
    cfg = load_config(REPO / "configs" / "config_demo.yaml", overrides)
    parent = load_parent(cfg, kind)
    assert parent.record["checkpoint_format"] == "reference"
    assert NAMINGS[naming][0] in parent.record["reference_version"]
    model = build_model(kind, **run_model_args(cfg, kind)).eval()
    model.load_state_dict(parent.state_dict)
    g = torch.Generator().manual_seed(8)
    ppg, ecg = (torch.randn(1, 1, FULL_NIGHT * SAMPLES_PER_WINDOW, generator=g) for _ in range(2))
    with torch.no_grad():
        expected = ref(ppg) if fusion is None else ref(ppg, ecg)
        logits = model(ppg) if fusion is None else model(ppg, ecg)
    assert torch.allclose(logits.softmax(dim=1), expected, rtol=1e-5, atol=1e-6)
