"""Tests for sleepppg.nights: which files and subjects a run stages, their IDs, and the recorded epochs of a
processed night."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import fake_edf

from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.errors import BadRecordingError, SetupError
from sleepppg.nights import (
    Night,
    NightJob,
    id_clash_reasons,
    prepare_labelled_night,
    recorded_epochs,
    refuse_clashing_night,
    resolve_edf_inputs,
    select_test_subjects,
    subject_id_for,
    unique_ids,
)


def test_resolve_inputs_and_ids(tmp_path):
    a = fake_edf(tmp_path, "mesa-sleep-0001.edf")
    b = fake_edf(tmp_path, "night_B.EDF")
    (tmp_path / "notes.txt").write_text("x")
    assert resolve_edf_inputs(str(a)) == [a]
    assert resolve_edf_inputs(str(tmp_path)) == sorted([a, b])
    assert resolve_edf_inputs(str(tmp_path / "mesa-*.edf")) == [a]
    assert subject_id_for(a) == "0001" and subject_id_for(b) == "night_B"
    assert unique_ids([a, b, a]) == ["0001", "night_B", "0001_2"]
    # a suffixed ID never takes another file's own name (night_2.txt keeps night_2; night.npy gets night_3)
    nights = [Path("recs/night.csv"), Path("recs/night.npy"), Path("recs/night_2.txt")]
    assert unique_ids(nights) == ["night", "night_3", "night_2"]
    assert unique_ids([Path("x/0001_2.edf"), a, a]) == ["0001_2", "0001", "0001_3"]
    cfs = fake_edf(tmp_path, "cfs-visit5-800002.edf")  # another cohort's names: preprocessing.id_pattern
    assert subject_id_for(cfs) == "cfs-visit5-800002"
    assert unique_ids([cfs, a], r"cfs-visit5-(\d+)") == ["800002", "mesa-sleep-0001"]
    empty = tmp_path / "empty"
    empty.mkdir()
    for spec in (str(empty), str(tmp_path / "nothing-*.edf"), str(tmp_path / "missing.edf")):
        with pytest.raises(SetupError):
            resolve_edf_inputs(spec)


def test_a_folder_with_clashing_ids_refuses_those_nights_by_both_names():
    """S3.csv and S003.npy (or mesa-sleep-0042.edf and mesa-sleep-42.edf) would take one label file and one
    metadata row: both nights are refused as 'id_clash'; night.csv and night.npy (one ID) are not a clash."""
    paths = [Path("r/S3.csv"), Path("r/S003.npy"), Path("r/night.csv"), Path("r/night.npy"),
             Path("r/mesa-sleep-0042.edf"), Path("r/mesa-sleep-42.edf"), Path("r/S30.csv")]
    reasons = id_clash_reasons(paths)
    assert sorted(p.name for p in reasons) == ["S003.npy", "S3.csv", "mesa-sleep-0042.edf", "mesa-sleep-42.edf"]
    assert "IDs S003 and S3 differ only by leading zeros or letter case" in reasons[Path("r/S3.csv")]
    assert "S003.npy" in reasons[Path("r/S3.csv")] and "0042 and 42" in reasons[Path("r/mesa-sleep-42.edf")]
    with pytest.raises(BadRecordingError, match="S3.csv: IDs S003 and S3") as err:
        refuse_clashing_night(NightJob("S3", Path("r/S3.csv")), lambda job: job, reasons)
    assert err.value.kind == "id_clash"
    job = NightJob("night", Path("r/night.csv"))
    assert refuse_clashing_night(job, lambda j: j, reasons) is job


def test_a_labelled_night_carries_its_unknown_stage_values_as_warnings(tmp_path):
    from sleepppg.scoring import find_label_files

    (tmp_path / "S3.csv").write_text("stage\nW\nStg9\nN2\nR\n")
    job = NightJob("s003", tmp_path / "s003.npy")
    night = prepare_labelled_night(job, lambda j: Night(j.subject_id, j.path, None, 4, False),
                                   find_label_files(tmp_path, r"(S\d+)"), n_windows=4)
    assert night.labels_W.tolist() == [0, -1, 1, 3]
    assert night.info["labels_warnings"] == ["hypnogram S3.csv: unknown stage 'Stg9' in 1 row: left unscored"]


def test_select_test_subjects_is_seeded():
    subs = [f"{i:04d}" for i in range(20)]
    first = select_test_subjects(subs, 5, seed=42)
    assert first == select_test_subjects(list(reversed(subs)), 5, seed=42)
    assert len(first) == 5 and set(first) <= set(subs)
    assert select_test_subjects(subs, 50, seed=1) != subs and len(select_test_subjects(subs, 50, 1)) == 20


def test_recorded_epochs_ignores_padding():
    ppg = np.zeros((6, SAMPLES_PER_WINDOW), np.float32)
    ppg[:3] = 1.0
    labels = np.array([0, 1, -1, 2, -1, -1])
    assert recorded_epochs(ppg, labels) == 4
    assert recorded_epochs(np.zeros_like(ppg), np.full(6, -1)) == 0
