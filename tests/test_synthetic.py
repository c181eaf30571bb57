"""Tests for make_synthetic_mesa.py and the generator in sleepppg.synthetic: MESA layout, EDF channels/rates
(read back with mne), NSRR XML schema, determinism (seed, workers, a whole tiny cohort's bytes), resume, ECG-less
subjects and the physiology a model has to learn; other cohorts (file names, 6-digit and leading-zero IDs,
Profusion XML giving the NSRR labels, generate -> pair check -> extract), DREAMT-shaped CSVs, and the command
line (--n-subjects, the deprecated --subjects, help)."""

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest

import make_synthetic_mesa as syn
from sleepppg.annotations import xml_to_labels
from sleepppg.constants import CONCEPT_TO_CLASS
from sleepppg.ids import mesa_commercial_ids, sleepppg_test_subjects
from sleepppg.synthetic.cohort import make_cohort
from sleepppg.synthetic.dreamt import DREAMT_COLUMNS, DREAMT_EVENT_COLUMNS, write_dreamt_subject
from sleepppg.synthetic.hypnogram import N3, STAGE_CONCEPTS, WAKE, simulate_hypnogram, simulate_states, stage_runs
from sleepppg.synthetic.mesa import EDF_SUBDIR, MESA_ORDER, XML_SUBDIR, edf_path, write_subject, xml_path
from sleepppg.synthetic.physiology import FS_CTRL, HR_OFFSET_BPM, simulate_physiology, stage_curve
from sleepppg.synthetic.signals import last_onset, lookup, resample, subject_rng

COHORT_HOURS = 1.0  # short nights keep the file fast; the hypnogram is compressed so every stage appears
COHORT_SIZE = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic-mesa")
    ids = make_cohort(root, COHORT_SIZE, hours=COHORT_HOURS, seed=1, no_ecg_fraction=0.2,
                          test_fraction=0.5)
    return root, ids


def read_xml(path):
    """[(event_type, concept, start, duration, element), ...] in file order."""
    root = ET.parse(path).getroot()
    assert root.tag == "PSGAnnotation"
    assert root.findtext("EpochLength") == "30"
    assert root.find("SoftwareVersion") is not None
    return [(ev.findtext("EventType") or "", ev.findtext("EventConcept"), float(ev.findtext("Start")),
             float(ev.findtext("Duration")), ev) for ev in root.find("ScoredEvents")]


def epoch_codes(events, n_epochs):
    codes = np.full(n_epochs, -99)
    for etype, concept, start, dur, _ in events:
        if etype == "Stages|Stages":
            codes[int(start // 30):int((start + dur) // 30)] = int(concept.split("|")[1])
    return codes


def read_channel(edf, channel):
    import mne

    raw = mne.io.read_raw_edf(edf, include=[channel], preload=True, verbose="error")
    return raw.get_data()[0], raw.info["sfreq"]


def test_ids_and_paths(cohort):
    root, ids = cohort
    assert len(ids) == COHORT_SIZE and ids == sorted(ids)
    commercial, test_list = set(mesa_commercial_ids()), set(sleepppg_test_subjects())
    assert set(ids) <= commercial
    assert len(set(ids) & test_list) == COHORT_SIZE // 2  # test_fraction=0.5
    for sid in ids:
        assert re.fullmatch(r"\d{4}", sid)
        assert (root / "polysomnography" / "edfs" / f"mesa-sleep-{sid}.edf").is_file()
        assert (root / "polysomnography" / "annotations-events-nsrr" / f"mesa-sleep-{sid}-nsrr.xml").is_file()
    # No temporary files left behind.
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]


def test_edf_channels_and_rates_read_by_mne(cohort):
    import mne

    root, ids = cohort
    with_ecg = 0
    for sid in ids:
        edf = edf_path(root, sid)
        raw = mne.io.read_raw_edf(edf, verbose="error")
        expected = ["EKG", "EEG1", "Flow", "Thor", "Abdo", "Pos", "Pleth", "SpO2", "HR"]
        if "EKG" in raw.ch_names:
            with_ecg += 1
        else:
            expected.remove("EKG")
        assert raw.ch_names == expected
        assert raw.n_times / raw.info["sfreq"] == pytest.approx(COHORT_HOURS * 3600)
        for channel, fs in (("Pleth", 256), ("EEG1", 256), ("Thor", 32), ("Flow", 32), ("SpO2", 1), ("HR", 1)):
            data, sfreq = read_channel(edf, channel)
            assert sfreq == fs
            assert data.size == fs * COHORT_HOURS * 3600
            assert np.isfinite(data).all() and data.std() > 0
        spo2, _ = read_channel(edf, "SpO2")
        assert 70 <= spo2.min() and spo2.max() <= 100
    assert with_ecg == COHORT_SIZE - round(0.2 * COHORT_SIZE)  # no_ecg_fraction=0.2 -> 1 without EKG
    ecg_sid = next(s for s in ids if "EKG" in mne.io.read_raw_edf(edf_path(root, s), verbose="error").ch_names)
    ekg, fs = read_channel(edf_path(root, ecg_sid), "EKG")
    assert fs == 256 and 0.3e-3 < np.percentile(ekg, 99.9) < 5e-3  # R peaks of ~1 mV (mne returns volts)


def test_xml_schema_and_stage_runs_tile_the_night(cohort):
    from edfio import read_edf

    root, ids = cohort
    duration = COHORT_HOURS * 3600
    for sid in ids:
        events = read_xml(xml_path(root, sid))
        etype, concept, start, dur, first = events[0]
        assert (etype, concept, start, dur) == ("", "Recording Start Time", 0.0, duration)
        assert first.find("EventType").text is None  # <EventType/>
        clock = first.findtext("ClockTime")
        assert re.fullmatch(r"00\.00\.00 \d\d\.\d\d\.\d\d", clock)
        assert read_edf(edf_path(root, sid)).starttime.strftime("%H.%M.%S") == clock.split()[1]
        starts = [e[2] for e in events[1:]]
        assert starts == sorted(starts)  # time order
        stages = [e for e in events if e[0] == "Stages|Stages"]
        assert stages[0][2] == 0.0
        for (_, c0, s0, d0, _), (_, c1, s1, _, _) in zip(stages, stages[1:]):
            assert s0 + d0 == s1  # contiguous, no overlap
            assert c0 != c1  # equal epochs merged into one run
        assert stages[-1][2] + stages[-1][3] == duration
        assert all(e[3] % 30 == 0 for e in stages)  # whole epochs
        assert max(e[3] for e in stages) > 30  # runs of several epochs, not one event per epoch
        assert {e[1] for e in stages} <= set(CONCEPT_TO_CLASS)
        others = {(e[0], e[1]) for e in events[1:] if e[0] != "Stages|Stages"}
        assert others <= {("Arousals|Arousals", "Arousal|Arousal ()"),
                          ("Respiratory|Respiratory", "Hypopnea|Hypopnea"),
                          ("Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation")}


def test_every_concept_and_event_type_appears_across_the_cohort(cohort):
    root, ids = cohort
    concepts, types = Counter(), Counter()
    for sid in ids:
        for etype, concept, *_ in read_xml(xml_path(root, sid))[1:]:
            types[etype] += 1
            if etype == "Stages|Stages":
                concepts[concept] += 1
    assert set(concepts) == set(CONCEPT_TO_CLASS)  # Stage 4, Movement and Unscored included
    assert {"Arousals|Arousals", "Respiratory|Respiratory"} <= set(types)
    # Each subject holds every 4-class label, even on a short night.
    for sid in ids:
        codes = epoch_codes(read_xml(xml_path(root, sid)), int(COHORT_HOURS * 120))
        assert (codes != -99).all()
        labels = {CONCEPT_TO_CLASS[STAGE_CONCEPTS[c]] for c in codes}
        assert {0, 1, 2, 3} <= labels


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = write_subject(tmp_path / "a", "0001", 0.2, seed=5)
    b = write_subject(tmp_path / "b", "0001", 0.2, seed=5)
    c = write_subject(tmp_path / "c", "0001", 0.2, seed=6)
    for pa, pb, pc in zip(a, b, c):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()


def test_parallel_equals_serial_and_resume_skips(tmp_path):
    kwargs = dict(hours=0.2, seed=2, no_ecg_fraction=0.34)
    serial = make_cohort(tmp_path / "serial", 3, workers=1, **kwargs)
    parallel = make_cohort(tmp_path / "parallel", 3, workers=2, **kwargs)
    assert serial == parallel
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.*"))
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / "serial" / rel).read_bytes() == (tmp_path / "parallel" / rel).read_bytes()

    # Resume: existing subjects are skipped; a subject missing one file is rewritten identically.
    root = tmp_path / "serial"
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.*")}
    victim = xml_path(root, serial[0])
    original = victim.read_bytes()
    victim.unlink()
    assert make_cohort(root, 3, workers=1, **kwargs) == serial
    assert victim.read_bytes() == original
    for path, mtime in before.items():
        if path.stem.split("-")[2] != serial[0]:
            assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    # --overwrite rewrites everything (and gives the same bytes).
    contents = {p: p.read_bytes() for p in before}
    make_cohort(root, 3, workers=1, overwrite=True, **kwargs)
    assert all(p.stat().st_mtime_ns != m for p, m in before.items() if p != victim)
    assert all(p.read_bytes() == data for p, data in contents.items())


def _cohort_hashes(root) -> dict:
    """sha256 of every file under `root`, by its path relative to `root`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_tiny_cohort_is_byte_identical_for_the_same_seed(tmp_path, capsys):
    """Every file the command line writes (EDF with the full montage, with and without EKG, NSRR and Profusion
    XML, DREAMT CSVs) has the same sha256 in two generations with one seed, and another seed changes each."""
    def generate(folder: str, seed: int) -> dict:
        root = tmp_path / folder
        for extra in (["--xml-format", "both", "--full-montage", "--no-ecg-fraction", "0.5"], ["--format", "dreamt"]):
            assert syn.main(["--out", str(root), "--n-subjects", "2", "--hours", "0.1", "--seed", str(seed),
                             *extra]) == 0
        return _cohort_hashes(root)

    first, second, other = generate("a", 11), generate("b", 11), generate("c", 12)
    assert len(first) == 2 * 3 + 2  # per MESA subject an EDF and two XMLs, and one CSV per DREAMT subject
    assert first == second
    assert all(other.get(name) != digest for name, digest in first.items())  # other IDs or other bytes


def test_without_ecg_and_other_ppg_rate(tmp_path):
    import mne

    edf, _ = write_subject(tmp_path, "0002", 0.1, seed=0, with_ecg=False, fs_ppg=128, ppg_label="PPG")
    raw = mne.io.read_raw_edf(edf, verbose="error")
    assert "EKG" not in raw.ch_names and "PPG" in raw.ch_names and "Pleth" not in raw.ch_names
    _, fs = read_channel(edf, "PPG")
    assert fs == 128
    # Dropping the EKG leaves the other channels unchanged.
    without, _ = write_subject(tmp_path / "a", "0002", 0.1, seed=0, with_ecg=False)
    with_ecg, _ = write_subject(tmp_path / "b", "0002", 0.1, seed=0, with_ecg=True)
    for channel in ("Pleth", "EEG1", "Thor"):
        assert np.array_equal(read_channel(without, channel)[0], read_channel(with_ecg, channel)[0])
    with pytest.raises(ValueError, match="fs_ppg"):
        write_subject(tmp_path, "0002", 0.1, seed=0, fs_ppg=34.5)
    with pytest.raises(ValueError, match="hours"):
        write_subject(tmp_path, "0002", 0, seed=0)
    with pytest.raises(ValueError, match="n_subjects"):
        make_cohort(tmp_path, 5000, hours=0.1)


def test_full_montage_adds_mesa_channels_and_keeps_the_basic_ones(tmp_path):
    import mne

    basic, xml_basic = write_subject(tmp_path / "basic", "0003", 0.1, seed=0)
    full, xml_full = write_subject(tmp_path / "full", "0003", 0.1, seed=0, full_montage=True)
    raw = mne.io.read_raw_edf(full, verbose="error")
    assert raw.ch_names == list(MESA_ORDER)  # all 20 MESA channels, in MESA's order
    for channel in ("Pleth", "EKG", "Thor", "SpO2"):
        assert np.array_equal(read_channel(basic, channel)[0], read_channel(full, channel)[0])
    assert xml_basic.read_bytes() == xml_full.read_bytes()
    assert read_channel(full, "EOG-L")[1] == 256 and read_channel(full, "OxStatus")[1] == 1


def test_stage_runs_merge_equal_epochs():
    assert stage_runs(np.array([0, 0, 2, 2, 2, 5, 0])) == [(0, 0, 2), (2, 2, 3), (5, 5, 1), (0, 6, 1)]
    assert stage_runs(np.array([], dtype=int)) == []


def test_hypnogram_architecture():
    """Over many full nights: latency, proportions of sleep stages, N3 early and REM late."""
    n1 = n2 = n3 = rem = 0
    n3_first_third = rem_last_half = 0
    for i in range(40):
        codes = simulate_hypnogram(np.random.default_rng(i), 1200)
        assert set(np.unique(codes)) <= set(STAGE_CONCEPTS)
        first_sleep = np.flatnonzero(np.isin(codes, [1, 2, 3, 4, 5]))[0]
        assert 10 * 2 <= first_sleep <= 60 * 2 + 2  # 10-30 min latency + up to 30 min to lights off
        n1 += np.sum(codes == 1)
        n2 += np.sum(codes == 2)
        n3 += np.sum(np.isin(codes, [3, 4]))
        rem += np.sum(codes == 5)
        n3_first_third += np.sum(np.isin(codes[:400], [3, 4]))
        rem_last_half += np.sum(codes[600:] == 5)
    sleep = n1 + n2 + n3 + rem
    assert 0.02 < n1 / sleep < 0.10
    assert 0.40 < n2 / sleep < 0.62
    assert 0.12 < n3 / sleep < 0.28
    assert 0.17 < rem / sleep < 0.30
    assert n3_first_third / n3 > 0.6
    assert rem_last_half / rem > 0.6


def test_stage_effects_change_smoothly_not_at_epoch_boundaries():
    states = np.array([WAKE] * 4 + [N3] * 4)
    n_ctrl = states.size * 30 * FS_CTRL
    curve = stage_curve(HR_OFFSET_BPM, states, 1.35, n_ctrl)
    step = 1.35 * (HR_OFFSET_BPM[WAKE] - HR_OFFSET_BPM[N3])
    assert curve[0] == pytest.approx(1.35 * HR_OFFSET_BPM[WAKE], abs=0.05)
    assert curve[-1] == pytest.approx(1.35 * HR_OFFSET_BPM[N3], abs=0.05)
    per_second = np.abs(np.diff(curve[::FS_CTRL]))
    assert per_second.max() < 0.03 * step  # a ~1-min transition, not a jump at the boundary
    boundary = 120 * FS_CTRL
    assert 0.2 * step < curve[boundary - 15 * FS_CTRL] - curve[boundary + 15 * FS_CTRL] < 0.8 * step


def _subject_hr_by_state(seed, sid, hours):
    """Mean HR (bpm from beat times) per physiological state and per-epoch HR, for one simulated subject."""
    rng = subject_rng(seed, sid)
    rng.integers(0, 4 * 3600)  # the start-clock draw of write_subject
    states = simulate_states(rng, int(hours * 120))
    phys = simulate_physiology(rng, states)
    beats = phys["beats"]
    hr = 60 / np.diff(beats)
    epoch = (beats[1:] // 30).astype(int)
    epoch_hr = np.bincount(epoch, hr, states.size) / np.maximum(np.bincount(epoch, None, states.size), 1)
    return states, epoch_hr


def test_heart_rate_follows_stage_but_overlaps_across_subjects():
    wake_means, deep_means, wake_epochs, deep_epochs = [], [], [], []
    for sid in ("0001", "0002", "0006", "0010", "0012", "0014"):
        states, epoch_hr = _subject_hr_by_state(0, sid, 8.0)
        wake = epoch_hr[states == WAKE]
        deep = epoch_hr[states == N3]
        assert deep.mean() < wake.mean()  # HR lower in N3 than in wake, within each subject
        wake_means.append(wake.mean())
        deep_means.append(deep.mean())
        wake_epochs.append(wake)
        deep_epochs.append(deep)
    # Across subjects the ranges overlap: some subject's deep sleep is faster than another's wake.
    assert max(deep_means) > min(wake_means)
    # No fixed HR threshold separates pooled wake from deep epochs well (but better than chance).
    values = np.r_[np.concatenate(wake_epochs), np.concatenate(deep_epochs)]
    is_wake = np.r_[np.ones(sum(map(len, wake_epochs))), np.zeros(sum(map(len, deep_epochs)))].astype(bool)
    best = max(0.5 * (np.mean(values[is_wake] > t) + np.mean(values[~is_wake] <= t))
               for t in np.percentile(values, np.arange(1, 100)))
    assert 0.55 < best < 0.9


def test_ppg_and_ekg_carry_the_same_beats(tmp_path):
    from scipy.signal import find_peaks

    edf, xml = write_subject(tmp_path, "0010", 0.25, seed=4)
    ppg, fs = read_channel(edf, "Pleth")
    ekg, _ = read_channel(edf, "EKG")
    r_peaks, _ = find_peaks(ekg, height=0.5 * np.percentile(ekg, 99.5), distance=int(0.33 * fs))
    # PPG: band-pass, then one systolic peak per beat (peaks closer than 0.6 RR are dicrotic waves).
    from scipy.signal import butter, sosfiltfilt

    clean = sosfiltfilt(butter(2, (0.5, 8), btype="bandpass", fs=fs, output="sos"), ppg)
    p_peaks, _ = find_peaks(clean, distance=int(0.6 * np.median(np.diff(r_peaks))))
    hr_ecg = 60 * len(r_peaks) / (0.25 * 3600)
    hr_ppg = 60 * len(p_peaks) / (0.25 * 3600)
    assert 40 < hr_ecg < 110
    assert hr_ppg == pytest.approx(hr_ecg, rel=0.08)


def test_cli_summary_and_bad_arguments(tmp_path, capsys):
    assert syn.main(["--out", str(tmp_path), "--subjects", "2", "--hours", "0.1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 written, 0 skipped" in out
    assert syn.main(["--out", str(tmp_path), "--subjects", "2", "--hours", "0.1", "--seed", "3"]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert len(list((tmp_path / "polysomnography" / "edfs").glob("*.edf"))) == 2
    for bad in (["--subjects", "0"], ["--subjects", "2", "--hours", "-1"],
                ["--subjects", "2", "--min-hours", "9", "--max-hours", "8"],
                ["--subjects", "2", "--test-fraction", "1.5"], ["--subjects", "1901"],
                ["--subjects", "2", "--seed", "-1"], ["--subjects", "2", "--hours", "nan"],
                ["--subjects", "2", "--hours", "inf"], ["--subjects", "2", "--max-hours", "inf"],
                ["--ids", "282,0282"]):
        with pytest.raises(SystemExit) as err:
            syn.main(["--out", str(tmp_path)] + bad)
        assert err.value.code == 2


# ----------------------------------------------------------------------------------------------------------
# Other cohorts: name formats, Profusion XML, DREAMT CSVs, the command line


def test_profusion_and_nsrr_xml_of_a_night_give_identical_labels(tmp_path):

    edf, nsrr = write_subject(tmp_path / "both", "0005", 0.5, seed=2, xml_format="both")
    profusion = xml_path(tmp_path / "both", "0005", dialect="profusion")
    assert profusion == tmp_path / "both/polysomnography/annotations-events-profusion/mesa-sleep-0005-profusion.xml"
    root = ET.parse(profusion).getroot()
    assert root.tag == "CMPStudyConfig" and root.findtext("EpochLength") == "30"
    codes = [int(s.text) for s in root.findall("SleepStages/SleepStage")]
    assert len(codes) == 60 and set(codes) <= set(STAGE_CONCEPTS)
    assert {e.findtext("Name") for e in root.find("ScoredEvents")} <= {"Arousal ()", "Hypopnea", "SpO2 desaturation"}
    for n_windows in (60, 70, 45):
        nsrr_labels = xml_to_labels(nsrr, n_windows)
        assert np.array_equal(nsrr_labels, xml_to_labels(profusion, n_windows))
        assert {0, 1, 2, 3} <= set(nsrr_labels.tolist())
    # The per-epoch codes are the NSRR XML's stage runs; 'both' leaves the EDF and NSRR XML as 'nsrr' writes them.
    assert codes == epoch_codes(read_xml(nsrr), 60).tolist()
    edf_only, nsrr_only = write_subject(tmp_path / "nsrr", "0005", 0.5, seed=2)
    assert edf.read_bytes() == edf_only.read_bytes() and nsrr.read_bytes() == nsrr_only.read_bytes()
    _, prof_only = write_subject(tmp_path / "prof", "0005", 0.5, seed=2, xml_format="profusion")
    assert prof_only.read_bytes() == profusion.read_bytes()
    assert not (tmp_path / "prof" / "polysomnography" / "annotations-events-nsrr").exists()


def test_other_cohort_end_to_end_generate_pair_check_extract(tmp_path, capsys):
    """A CFS-named cohort with 6-digit IDs and Profusion XML: generate -> pair check -> extract."""
    import h5py

    import extract_mesa_data as ex
    import verify_mesa_dataset as vd

    root = tmp_path / "cfs"
    assert syn.main(["--out", str(root), "--ids", "800002,800010", "--name-format", "cfs-visit5-{id}",
                     "--xml-format", "profusion", "--hours", "0.15", "--no-ecg-fraction", "0"]) == 0
    edf_dir = root / "polysomnography" / "edfs"
    xml_dir = root / "polysomnography" / "annotations-events-profusion"
    assert sorted(p.name for p in edf_dir.iterdir()) == ["cfs-visit5-800002.edf", "cfs-visit5-800010.edf"]
    pattern = ["--id-pattern", r"cfs-visit5-(\d+)"]
    report = tmp_path / "pair.json"
    assert vd.main(["--xml-dir", str(xml_dir), "--edf-dir", str(edf_dir), "--out", str(report)]) == 1  # MESA's
    assert vd.main(["--xml-dir", str(xml_dir), "--edf-dir", str(edf_dir), "--out", str(report), *pattern]) == 0
    matched = json.loads(report.read_text())["matched"]
    assert [(m["id"], m["dialect"]) for m in matched] == [("800002", "profusion"), ("800010", "profusion")]
    out = tmp_path / "x"
    assert ex.main(["--edf-dir", str(edf_dir), "--xml-dir", str(xml_dir), "--out-dir", str(out), "--workers", "1",
                    "--windows-per-subject", "20", *pattern]) == 0
    with h5py.File(out / ex.PPG_FILE) as f:
        assert f["subject_ids"][()].tolist() == [b"800002"] * 20 + [b"800010"] * 20
        labels = f["labels"][()]
    expected = [xml_to_labels(xml_dir / f"cfs-visit5-{sid}-profusion.xml", 20) for sid in ("800002", "800010")]
    assert np.array_equal(labels, np.concatenate(expected)) and (labels != -1).any()


def test_leading_zero_ids_kept_and_reported(tmp_path, capsys):
    import verify_mesa_dataset as vd

    assert make_cohort(tmp_path, 0, hours=0.05, ids=["282"], no_ecg_fraction=0) == ["282"]  # text kept
    assert edf_path(tmp_path, "282").name == "mesa-sleep-282.edf" and edf_path(tmp_path, "282").is_file()
    # the generator refuses two IDs that differ only by leading zeros (they would be the same night, and the
    # pair check and extraction could not tell them apart) ...
    with pytest.raises(ValueError, match="differ only by leading zeros"):
        make_cohort(tmp_path, 0, hours=0.05, ids=["282", "0282"])
    # ... and the pair check reports such a pair when it meets one (here copied by hand)
    for path in (edf_path(tmp_path, "282"), xml_path(tmp_path, "282")):
        path.with_name(path.name.replace("-282", "-0282")).write_bytes(path.read_bytes())
    out = tmp_path / "pair.json"
    assert vd.main(["--xml-dir", str(tmp_path / XML_SUBDIR), "--edf-dir", str(tmp_path / EDF_SUBDIR),
                    "--out", str(out)]) == 1
    assert [c["ids"] for c in json.loads(out.read_text())["id_clashes"]] == [["0282", "282"]]
    with pytest.raises(ValueError, match="more than once"):
        make_cohort(tmp_path, 0, hours=0.05, ids=["0001", "0001"])
    with pytest.raises(ValueError, match="letters, digits"):
        make_cohort(tmp_path, 0, hours=0.05, ids=["../x"])


def test_dreamt_csv_shape_columns_and_stages(tmp_path):
    import pandas as pd

    ids = make_cohort(tmp_path / "a", 2, hours=0.25, seed=4, fmt="dreamt")
    assert ids == ["S002", "S003"]
    csv = tmp_path / "a" / "data_64Hz" / "S002_whole_df.csv"
    assert sorted(p.name for p in (tmp_path / "a" / "data_64Hz").iterdir()) == ["S002_whole_df.csv",
                                                                                 "S003_whole_df.csv"]
    df = pd.read_csv(csv)
    assert list(df.columns) == list(DREAMT_COLUMNS)
    assert len(df) == 0.25 * 3600 * 64
    assert np.array_equal(df["TIMESTAMP"].to_numpy(), np.arange(len(df)) / 64)  # s from 0, 64 Hz, exact
    stages = df["Sleep_Stage"].to_numpy().astype(str)
    assert set(stages) <= {"P", "W", "N1", "N2", "N3", "R", "Missing"}
    assert {"W", "N2", "N3", "R", "Missing"} <= set(stages)
    per_epoch = stages.reshape(-1, 30 * 64)
    assert (per_epoch == per_epoch[:, :1]).all()  # one stage per 30-s epoch
    n_prep = int(np.argmax(per_epoch[:, 0] != "P"))
    assert 2 <= n_prep <= 10 and "P" not in per_epoch[n_prep:, 0]  # a few minutes of P, then never again
    for column in ("ACC_X", "ACC_Y", "ACC_Z"):
        assert df[column].dtype == np.int64 and df[column].between(-128, 127).all()
    assert df[["BVP", "TEMP", "EDA", "HR", "IBI"]].notna().all().all()
    assert df["TEMP"].between(30, 38).all() and (df["EDA"] >= 0).all() and df["HR"].between(35, 150).all()
    assert np.allclose(60 / df["IBI"].median(), df["HR"].median(), rtol=0.1)
    events = df[list(DREAMT_EVENT_COLUMNS)]
    assert set(np.unique(events.to_numpy()[~np.isnan(events.to_numpy())])) <= {1.0}
    assert (events.notna().sum(axis=1)[df["Sleep_Stage"].isin(["P"])] == 0).all()  # no events before lights-off
    # BVP carries the heart beats: its dominant rhythm is the HR column's.
    from scipy.signal import butter, find_peaks, sosfiltfilt

    bvp = sosfiltfilt(butter(2, (0.5, 4), btype="bandpass", fs=64, output="sos"), df["BVP"].to_numpy())
    peaks, _ = find_peaks(bvp, distance=int(0.6 * 64 * 60 / df["HR"].median()))
    assert len(peaks) / (len(df) / 64 / 60) == pytest.approx(df["HR"].mean(), rel=0.1)
    # Byte-identical per seed (the workers share make_cohort's code, tested on MESA nights); another seed differs.
    assert csv.read_bytes() == write_dreamt_subject(tmp_path / "b", "S002", 0.25, seed=4).read_bytes()
    assert csv.read_bytes() != write_dreamt_subject(tmp_path / "c", "S002", 0.25, seed=5).read_bytes()


def test_cli_n_subjects_deprecated_alias_and_help(tmp_path, capsys, caplog):
    assert syn.main(["--out", str(tmp_path / "a"), "--n-subjects", "1", "--hours", "0.05", "--seed", "3"]) == 0
    assert "is deprecated" not in caplog.text
    assert syn.main(["--out", str(tmp_path / "b"), "--subjects", "1", "--hours", "0.05", "--seed", "3"]) == 0
    assert "--subjects N is deprecated for the generator: use --n-subjects N" in caplog.text
    a, b = (sorted((tmp_path / d).rglob("*.*")) for d in "ab")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    capsys.readouterr()
    for bad in ([], ["--n-subjects", "2", "--ids", "0001"], ["--n-subjects", "1", "--subjects", "2"],
                ["--ids", "0001", "--name-format", "cfs-visit5"], ["--ids", "a/b"],
                ["--n-subjects", "2", "--xml-format", "edf"], ["--n-subjects", "1000", "--format", "dreamt"]):
        with pytest.raises(SystemExit) as err:
            syn.main(["--out", str(tmp_path / "c")] + bad)
        assert err.value.code == 2, bad
    assert not (tmp_path / "c").exists()
    assert all(action.help for action in syn.build_parser()._actions)  # every flag has a help text
    with pytest.raises(SystemExit):
        syn.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "deprecated alias of --n-subjects" in text and "cfs-visit5-{id}" in text and "(default: 0)" in text


@pytest.mark.parametrize("fs_in, fs_out, first, count", [(4, 32, 0, None), (32, 256, 512, 120), (32, 256, 624, 16),
                                                          (64, 256, 3, 5), (32, 100, 7, 200)])
def test_resample_gives_the_values_of_np_interp(fs_in, fs_out, first, count):
    """The synthesis upsamples with a broadcast fill instead of np.interp: same values, chunk by chunk, with
    the last value held past the end (the final input interval), and np.interp itself for a non-multiple rate."""
    x = np.random.default_rng(0).standard_normal(80)
    n = x.size * fs_out // fs_in
    want = np.interp(np.arange(n) / fs_out, np.arange(x.size) / fs_in, x)
    stop = n if count is None else first + count
    got = resample(x, fs_in, fs_out, first, count)
    assert got.shape == (stop - first,)
    np.testing.assert_allclose(got, want[first:stop], rtol=0, atol=1e-12)


def test_lookup_and_last_onset_match_np_interp_and_searchsorted():
    rng = np.random.default_rng(1)
    table = rng.standard_normal(50)
    pos = np.r_[rng.uniform(-3, 52, 500), 0.0, 49.0, 48.9999]
    want = np.interp(pos, np.arange(table.size), table, left=0.0, right=0.0)
    np.testing.assert_allclose(lookup(table, pos), want, rtol=0, atol=1e-12)
    onsets = np.sort(rng.integers(-50, 1200, 40))  # repeats and onsets before/after the chunk included
    for first, count in ((0, 1000), (100, 37), (990, 300)):
        i = np.arange(first, first + count)
        np.testing.assert_array_equal(last_onset(onsets, first, count),
                                      np.searchsorted(onsets, i, side="right") - 1)
