"""Tests of sleepppg.resume that need no training run (the resumes themselves are in tests/test_train.py):
what a resume names as changed, which checkpoints belong to which run folder."""
from __future__ import annotations

import json
import logging

import pytest

from sleepppg.errors import SetupError
from sleepppg.resume import Resume, check_run_folder, check_run_identity, resume_changes
from sleepppg.runstate import RUN_IDENTITY_FILE, new_run_identity


def test_resume_changes_names_split_changes():
    ckpt = {"config": {"training": {"num_epochs": 2, "seed": 1}},
            "data_fingerprint": {"files": {"data.ppg_file": {"path": "/a", "size": 1, "mtime_ns": 1}},
                                 "split": {"train": ["0001", "0002"], "val": ["0003"], "test": ["0004"]}}}
    same = json.loads(json.dumps(ckpt["data_fingerprint"]))
    assert resume_changes(ckpt, {"training": {"num_epochs": 9, "seed": 1}}, same) == []  # more epochs: fine
    moved = json.loads(json.dumps(same))
    moved["split"]["train"], moved["split"]["val"] = ["0001", "0003"], ["0002"]
    changes = resume_changes(ckpt, {"training": {"num_epochs": 2, "seed": 2}}, moved)
    assert changes == ["config training.seed: 1 -> 2",
                       "the train subjects changed (1 added, e.g. ['0003']; 1 gone, e.g. ['0002'])",
                       "the val subjects changed (1 added, e.g. ['0002']; 1 gone, e.g. ['0003'])"]


def _run_folder(root, uid):
    """A run folder's checkpoints/ with config.json, and run.json when `uid` is given."""
    ckpt_dir = root / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "config.json").write_text("{}")
    if uid is not None:
        (ckpt_dir / RUN_IDENTITY_FILE).write_text(json.dumps({"run_uid": uid, "model_kind": "ppg_only"}))
    return ckpt_dir


def test_a_checkpoint_outside_a_run_folder_is_refused_naming_what_is_missing(tmp_path):
    loose = tmp_path / "downloads" / "myrun" / "last.pth"
    loose.parent.mkdir(parents=True)
    loose.write_bytes(b"x")
    with pytest.raises(SetupError, match=r"not inside a run folder .*<run folder>/checkpoints/"):
        check_run_folder(loose)
    bare = tmp_path / "other" / "checkpoints" / "last.pth"
    bare.parent.mkdir(parents=True)
    bare.write_bytes(b"x")
    with pytest.raises(SetupError, match="no config.json beside the checkpoint"):
        check_run_folder(bare)
    check_run_folder(_run_folder(tmp_path / "run", new_run_identity()) / "last.pth")


def test_another_runs_checkpoint_in_a_run_folder_is_refused(tmp_path, caplog):
    mine, theirs = new_run_identity(), new_run_identity()
    assert mine != theirs and len(mine) == 32
    path = _run_folder(tmp_path / "run", mine) / "last.pth"
    check_run_identity(Resume(path, {"run_uid": mine}))
    for ckpt, why in (({"run_uid": theirs}, f"it belongs to run {theirs}, the run folder is run {mine}"),
                      ({}, f"it carries no run id, while the run folder is run {mine}")):
        with pytest.raises(SetupError, match=why):
            check_run_identity(Resume(path, ckpt))
    older = _run_folder(tmp_path / "older", None) / "last.pth"
    with pytest.raises(SetupError, match="has no checkpoints/run.json"):
        check_run_identity(Resume(older, {"run_uid": theirs}))
    with caplog.at_level(logging.WARNING):  # an older run: neither has an identity
        check_run_identity(Resume(older, {"run_uid": None}))
    assert "carry no run identity" in caplog.text
