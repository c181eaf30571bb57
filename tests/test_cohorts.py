"""Tests for the cohort side of extract_mesa_data.py: Profusion XML labels (against a slow obvious version),
the annotation dialect read from the root element, the PPG channel chosen by rate (a 1-Hz PlethStatus before
Pleth), IDs that differ only by leading zeros, and bad annotation files skipped by name while the rest run.

Recordings are tiny EDFs (6 min) written with edfio under tmp_path.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import edfio
import h5py
import numpy as np
import pytest

import extract_mesa_data as ex
from sleepppg.annotations import PROFUSION_STAGE_TO_CLASS, xml_to_labels
from sleepppg.edf import read_edf
from sleepppg.errors import BadRecordingError

W = 12  # windows per subject in these tests (6 min)
PROFUSION_TO_NSRR_CONCEPT = {0: "Wake|0", 1: "Stage 1 sleep|1", 2: "Stage 2 sleep|2", 3: "Stage 3 sleep|3",
                             4: "Stage 4 sleep|4", 5: "REM sleep|5", 6: "Movement|6", 9: "Unscored|9"}


def profusion_xml(stages, epoch_length="30", extra="") -> str:
    body = "".join(f"<SleepStage>{s}</SleepStage>" for s in stages)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<CMPStudyConfig>'
            f"<EpochLength>{epoch_length}</EpochLength>{extra}<ScoredEvents><ScoredEvent><Name>Arousal</Name>"
            "<Start>12.5</Start><Duration>5</Duration><Input>C3</Input></ScoredEvent></ScoredEvents>"
            f"<SleepStages>{body}</SleepStages></CMPStudyConfig>\n")


def nsrr_xml(stages) -> str:
    events = "".join(f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>"
                     f"{PROFUSION_TO_NSRR_CONCEPT[s]}</EventConcept><Start>{30 * i}</Start><Duration>30</Duration>"
                     "</ScoredEvent>" for i, s in enumerate(stages))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<PSGAnnotation><EpochLength>30</EpochLength><ScoredEvents>'
            f"{events}</ScoredEvents></PSGAnnotation>\n")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_edf(path: Path, minutes: float = 6, seed: int = 0, status_first: bool = False) -> Path:
    """Pleth at 64 Hz (a pulse wave), optionally preceded by a 1-Hz PlethStatus (a constant 0/1 flag)."""
    rng = np.random.default_rng(seed)
    seconds = int(minutes * 60)
    t = np.arange(seconds * 64) / 64
    ppg = 50 * np.sin(2 * np.pi * 1.1 * t) + 10 * np.sin(2 * np.pi * 0.25 * t) + 3 * rng.standard_normal(t.size)
    signals = [edfio.EdfSignal(ppg, 64, label="Pleth", physical_range=(-200, 200)),
               edfio.EdfSignal(np.full(seconds, 95.0), 1, label="SpO2", physical_range=(0, 100))]
    if status_first:
        status = np.where(rng.random(seconds) < 0.5, 0.0, 1.0)
        signals.insert(0, edfio.EdfSignal(status, 1, label="PlethStatus", physical_range=(0, 255)))
    path.parent.mkdir(parents=True, exist_ok=True)
    edfio.Edf(signals).write(path)
    return path


def slow_profusion_labels(stages, epoch_s, n_windows):
    """Obvious version: label every second from its Profusion epoch, then a 30-s epoch is labelled when all
    its 30 seconds agree (epoch lengths here are whole seconds)."""
    classes = [PROFUSION_STAGE_TO_CLASS.get(s, -1) for s in stages]
    per_second = [classes[int(sec // epoch_s)] for sec in range(int(len(stages) * epoch_s))]
    out = []
    for j in range(n_windows):
        chunk = per_second[30 * j:30 * j + 30]
        out.append(chunk[0] if len(chunk) == 30 and len(set(chunk)) == 1 else -1)
    return out


# ----------------------------------------------------------------------------------------------------------
# Labels


def test_profusion_codes_map_like_nsrr_concepts(tmp_path):
    stages = [0, 1, 2, 3, 4, 5, 6, 9, 7, 2, 5, 0]
    prof = xml_to_labels(write(tmp_path / "a-profusion.xml", profusion_xml(stages)), W + 3)
    nsrr = xml_to_labels(write(tmp_path / "a-nsrr.xml", nsrr_xml([s if s != 7 else 9 for s in stages])), W + 3)
    assert prof.tolist() == [0, 1, 1, 2, 2, 3, -1, -1, -1, 1, 3, 0, -1, -1, -1]
    assert prof.dtype == np.int64 and prof.tolist() == nsrr.tolist()
    # Stages past n_windows are ignored.
    assert xml_to_labels(tmp_path / "a-profusion.xml", 4).tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("epoch_s", [10, 15, 20, 45, 60])
def test_profusion_other_epoch_lengths_match_slow_version(tmp_path, epoch_s):
    rng = np.random.default_rng(epoch_s)
    stages = np.repeat(rng.choice([0, 1, 2, 3, 4, 5, 9], 30), rng.integers(3, 12, 30))  # runs of 3-11 epochs
    path = write(tmp_path / "p.xml", profusion_xml(stages.tolist(), epoch_length=f"{epoch_s}.0"))
    n_windows = math.ceil(stages.size * epoch_s / 30) + 2
    labels = xml_to_labels(path, n_windows)
    assert labels.tolist() == slow_profusion_labels(stages.tolist(), epoch_s, n_windows)
    assert (labels != -1).sum() > n_windows // 3  # most epochs are labelled, not refused wholesale


def test_profusion_20s_epochs_by_hand(tmp_path):
    # 20-s epochs W W N2 N2 N2 R: 30-s epoch 0 = [0, 30) covers W W -> Wake; epoch 1 = [30, 60) covers W N2
    # -> mixed -> -1; epoch 2 = [60, 90) covers N2 N2 -> Light; epoch 3 = [90, 120) covers N2 R -> -1.
    path = write(tmp_path / "p.xml", profusion_xml([0, 0, 2, 2, 2, 5], epoch_length="20"))
    assert xml_to_labels(path, 5).tolist() == [0, -1, 1, -1, -1]


@pytest.mark.parametrize("text, kind, words", [
    (profusion_xml([]), "no_stage_events", "without stages"),
    (profusion_xml([0, 1]).replace("<SleepStages>", "<Other>").replace("</SleepStages>", "</Other>"),
     "no_stage_events", "without stages"),
    (profusion_xml([0, "two"]), "malformed_xml", "SleepStage 2 is not an integer"),
    (profusion_xml([0, 1], epoch_length="0"), "unsupported_epoch_length", "EpochLength '0'"),
    (profusion_xml([0, 1], epoch_length="abc"), "unsupported_epoch_length", "EpochLength 'abc'"),
    (profusion_xml([0, 1]).replace("<EpochLength>30</EpochLength>", ""), "unsupported_epoch_length",
     "EpochLength ''"),
    ("<?xml version='1.0'?><SomethingElse><SleepStages><SleepStage>0</SleepStage></SleepStages></SomethingElse>",
     "unknown_xml_dialect", "root element is <SomethingElse>"),
])
def test_bad_annotation_files_are_named(tmp_path, text, kind, words):
    path = write(tmp_path / "mesa-sleep-0001-profusion.xml", text)
    with pytest.raises(BadRecordingError) as info:
        xml_to_labels(path, W)
    assert info.value.kind == kind
    assert words in str(info.value) and "mesa-sleep-0001-profusion.xml" in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# PPG channel


def test_plethstatus_listed_first_does_not_win(tmp_path):
    edf = write_edf(tmp_path / "mesa-sleep-0001.edf", status_first=True)
    rec = read_edf(edf, with_ecg=False)
    assert (rec["ppg_channel"], rec["ppg_fs"]) == ("Pleth", 64.0)
    assert rec["ppg"].size == 6 * 60 * 64
    # The same PPG as an EDF without the status channel.
    plain = read_edf(write_edf(tmp_path / "plain.edf"), with_ecg=False)
    assert np.array_equal(rec["ppg"], plain["ppg"])


# ----------------------------------------------------------------------------------------------------------
# Extraction: mixed dialects, a bad annotation, leading-zero clashes


def _extract(edf_dir, xml_dir, out_dir, *extra):
    return ex.main(["--edf-dir", str(edf_dir), "--xml-dir", str(xml_dir), "--out-dir", str(out_dir),
                    "--windows-per-subject", str(W), "--workers", "1", *extra])


def test_extraction_mixed_dialects_bad_xml_and_clashes(tmp_path, capsys):
    edf_dir, xml_dir = tmp_path / "edfs", tmp_path / "xml"
    stages = [0, 0, 1, 2, 2, 3, 4, 3, 2, 5, 5, 0]
    for k, sid in enumerate(["0001", "0002", "0003", "0004", "282", "0282"]):
        write_edf(edf_dir / f"mesa-sleep-{sid}.edf", seed=k, status_first=sid == "0002")
    write(xml_dir / "mesa-sleep-0001-nsrr.xml", nsrr_xml(stages))
    write(xml_dir / "mesa-sleep-0002-profusion.xml", profusion_xml(stages))
    write(xml_dir / "mesa-sleep-0003-nsrr.xml", "<?xml version='1.0'?><Annotations><Stage>2</Stage></Annotations>")
    # both dialects: NSRR is used; one epoch's concept is unknown (left unscored, a warning), one is in lower case
    write(xml_dir / "mesa-sleep-0004-nsrr.xml", nsrr_xml([2] * W).replace("Stage 2 sleep|2", "Stg9", 1)
          .replace("Stage 2 sleep|2", "stage 2 sleep|2", 1))
    write(xml_dir / "mesa-sleep-0004-profusion.xml", profusion_xml([5] * W))
    write(xml_dir / "mesa-sleep-282-nsrr.xml", nsrr_xml(stages))
    write(xml_dir / "mesa-sleep-0282-nsrr.xml", nsrr_xml(stages))
    out = tmp_path / "out"
    assert _extract(edf_dir, xml_dir, out) == 1
    failed = {f["id"]: f for f in json.loads((out / ex.FAILED_FILE).read_text())}
    assert sorted(failed) == ["0003", "0282", "282"]
    assert failed["0003"]["kind"] == "unknown_xml_dialect" and "<Annotations>" in failed["0003"]["reason"]
    for sid in ("282", "0282"):
        assert failed[sid]["kind"] == "id_clash"
        assert "0282 and 282 differ only by leading zeros" in failed[sid]["reason"]
    with h5py.File(out / ex.PPG_FILE) as f:
        assert sorted(set(f["subject_ids"][()].tolist())) == [b"0001", b"0002", b"0004"]
        labels = f["labels"][()].reshape(3, W)
    expected = [0, 0, 1, 1, 1, 2, 2, 2, 1, 3, 3, 0]
    assert labels[0].tolist() == labels[1].tolist() == expected  # NSRR and Profusion alike
    assert labels[2].tolist() == [-1] + [1] * (W - 1)  # the NSRR XML, not the Profusion one (REM)
    warnings = json.loads((out / ex.WARNINGS_FILE).read_text())
    assert [(w["id"], w["warning"]) for w in warnings] == [
        ("0004", "mesa-sleep-0004-nsrr.xml: unknown stage 'Stg9' in 1 epoch: left unscored")]
    log_text = (out / "logs" / "processing.log").read_text()
    assert "1 subject(s) have both an NSRR and a Profusion XML; the NSRR XML is used (e.g. 0004)" in log_text
    assert "mesa-sleep-0002.edf: PPG channel 'Pleth'" in log_text
    assert "3 failed" in capsys.readouterr().out


def test_stage_spellings_of_nsrr_and_profusion_follow_the_one_table(tmp_path):
    """Lower-case NSRR concepts, names without a code, codes with another name; unknown values are counted
    and named, and a night where they are the majority is refused by value."""
    concepts = ["wake|0", "Stage 4 sleep", "REM|5", "N3", "W", "Movement|6", "Stg9", "Stg9", "Stage 1 sleep|1",
                "sleep stage R|5"]
    xml = write(tmp_path / "a-nsrr.xml", nsrr_xml([0] * len(concepts)))
    text = xml.read_text()
    for concept in concepts:
        text = text.replace("<EventConcept>Wake|0<", f"<EventConcept>{concept}<", 1)
    xml.write_text(text)
    warnings = []
    assert xml_to_labels(xml, 11, warnings).tolist() == [0, 2, 3, 2, 0, -1, -1, -1, 1, 3, -1]
    assert warnings == ["a-nsrr.xml: unknown stage 'Stg9' in 2 epochs: left unscored"]
    mostly = write(tmp_path / "b-nsrr.xml", text.replace("<EventConcept>wake|0<", "<EventConcept>Stg8<")
                   .replace("Stage 4 sleep<", "Stg8<").replace("REM|5<", "Stg8<").replace("N3<", "Stg8<"))
    with pytest.raises(BadRecordingError, match=r"6 of 10 epochs carry a stage .*'Stg8' in 4 epochs, 'Stg9' in "
                                                r"2 epochs") as err:
        xml_to_labels(mostly, 11)
    assert err.value.kind == "unknown_stages"
    profusion = write(tmp_path / "c-profusion.xml", profusion_xml([0, 5, 7, 4, 9, 2]))
    warnings = []
    assert xml_to_labels(profusion, 6, warnings).tolist() == [0, 3, -1, 2, -1, 1]
    assert warnings == ["c-profusion.xml: unknown stage '7' in 1 Profusion epoch: left unscored"]


def test_dreamt_ids_that_differ_by_zeros_or_case_are_a_clash(tmp_path):
    """DREAMT S3 and S003 (and s2 beside S002) are one participant written two ways: both are skipped as
    'id_clash' naming both files, as for MESA EDFs; S004 alone goes on."""
    from sleepppg.extraction import find_dreamt_subjects, plan

    for name in ("S3_whole_df.csv", "S003_whole_df.csv", "S002_whole_df.csv", "s2_whole_df.csv",
                 "S004_whole_df.csv"):
        (tmp_path / name).write_text("TIMESTAMP,BVP,Sleep_Stage\n")
    subjects, problems = find_dreamt_subjects(tmp_path)
    assert sorted(subjects) == ["S002", "S003", "S004", "S3", "s2"]
    assert {sid: kind for sid, (kind, _) in problems.items()} == {sid: "id_clash" for sid in
                                                                   ("S002", "s2", "S003", "S3")}
    assert "IDs S003 and S3 differ only by leading zeros or letter case" in problems["S3"][1]
    assert "S003_whole_df.csv, S3_whole_df.csv" in problems["S003"][1]
    settings = {"out_dir": str(tmp_path / "out"), "windows_per_subject": W, "resample_method": "linear",
                "ppg_channels": ["Pleth"], "format": "dreamt", "ppg_column": "BVP", "nominal_fs": 64.0,
                "max_gap_s": 30.0}
    jobs, _, failed = plan(sorted(subjects), subjects, problems, settings, overwrite=False)
    assert [j["id"] for j in jobs] == ["S004"]
    assert sorted(f["id"] for f in failed) == ["S002", "S003", "S3", "s2"]


def test_extraction_with_an_id_pattern(tmp_path):
    edf_dir, xml_dir = tmp_path / "edfs", tmp_path / "xml"
    for k, sid in enumerate(["800002", "800010"]):
        write_edf(edf_dir / f"cfs-visit5-{sid}.edf", seed=k)
        write(xml_dir / f"cfs-visit5-{sid}-profusion.xml", profusion_xml([2] * W))
    out = tmp_path / "out"
    assert _extract(edf_dir, xml_dir, out) == 2  # with MESA's pattern there is nothing to pair
    assert _extract(edf_dir, xml_dir, out, "--id-pattern", r"cfs-visit5-(\d+)") == 0
    with h5py.File(out / ex.INDEX_FILE) as f:
        assert sorted(f["subjects"]) == ["800002", "800010"]
    assert _extract(edf_dir, xml_dir, out, "--id-pattern", r"cfs-visit5-\d+") == 2
