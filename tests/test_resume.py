"""Tests of sleepppg.resume that need no training run (the resumes themselves are in tests/test_train.py):
what a resume names as changed."""
from __future__ import annotations

import json

from sleepppg.resume import resume_changes


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
