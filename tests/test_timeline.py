"""Recordings that are not one continuous stretch: EDF+D files read on their real timeline (sleepppg.edfplus,
sleepppg.edf), staged and extracted with their pauses as gaps; EDF+D/EDF+C files whose time keeping cannot be
trusted refused by kind; plain EDF and EDF+C read as before; tables whose clock goes back refused
(sleepppg.grid.check_stamps_rise)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import annotation_channel, read_csv, write_raw_edf, write_tiny_checkpoint, write_xml

from sleepppg.constants import IGNORE_INDEX
from sleepppg.edf import read_edf
from sleepppg.errors import BadRecordingError

PPG_FS, ECG_FS = 64, 128  # Hz (samples per 1-s record)
GAP_MIN = 54  # the pause between the two parts of the test night
PART_MIN = 3  # each part: 6 epochs
N_WIN = 2 * (2 * PART_MIN) + 2 * GAP_MIN  # 120 epochs: the whole 60-min timeline


def channels(seconds: int, seed: int = 0) -> list[dict]:
    """Pleth (a 1.1-Hz pulse) at 64 Hz and EKG at 128 Hz as stored integers, 1-s records."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * PPG_FS) / PPG_FS
    pleth = (12000 * np.sin(2 * np.pi * 1.1 * t) + 800 * rng.standard_normal(t.size)).astype(np.int64)
    te = np.arange(seconds * ECG_FS) / ECG_FS
    ekg = (9000 * np.sin(2 * np.pi * 1.1 * te) ** 9 + 500 * rng.standard_normal(te.size)).astype(np.int64)
    return [dict(label="EKG", spr=ECG_FS, digital=ekg, pmin=-2.5, pmax=2.5, dmin=-32768, dmax=32767, dim="mV"),
            dict(label="Pleth", spr=PPG_FS, digital=pleth, pmin=-100, pmax=100, dmin=-32768, dmax=32767, dim="")]


def two_part_onsets(before_s: int, gap_s: float, after_s: int) -> list[float]:
    """Onsets of 1-s records: `before_s` records from 0, then `after_s` records after a `gap_s` pause."""
    return [float(r) for r in range(before_s)] + [before_s + gap_s + r for r in range(after_s)]


def physical(c: dict) -> np.ndarray:
    gain = (c["pmax"] - c["pmin"]) / (c["dmax"] - c["dmin"])
    return (c["pmin"] + (c["digital"] - c["dmin"]) * gain) * (1e-3 if c["dim"] == "mV" else 1.0)


# ----------------------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("bdf", [False, True])
def test_edf_plus_d_is_read_on_its_real_timeline(tmp_path, bdf):
    chans = channels(120)
    if bdf:  # the same values as 24-bit integers
        chans = [dict(c, digital=c["digital"] * 256, dmin=-2**23, dmax=2**23 - 1) for c in chans]
    onsets = [0.5 + s for s in two_part_onsets(60, 90.0, 60)]  # first record 0.5 s after the start time
    path = write_raw_edf(tmp_path / ("d.bdf" if bdf else "d.edf"), chans + [annotation_channel(onsets, bdf=bdf)],
                         bdf=bdf, edf_plus="BDF+D" if bdf else "EDF+D")
    rec = read_edf(path)
    assert rec["gaps"] == [[0.0, 0.5], [60.5, 90.0]] and rec["duration_s"] == 210.5
    for key, fs, c in (("ppg", PPG_FS, chans[1]), ("ecg", ECG_FS, chans[0])):
        x, truth = rec[key], physical(c)
        assert x.size == round(210.5 * fs)
        first, second = round(0.5 * fs), round(150.5 * fs)  # each part from its onset, never spliced
        np.testing.assert_allclose(x[first:first + 60 * fs], truth[:60 * fs], rtol=0, atol=1e-12)
        np.testing.assert_allclose(x[second:], truth[60 * fs:], rtol=0, atol=1e-12)
        assert np.isnan(x[:first]).all() and np.isnan(x[first + 60 * fs:second]).all()


def test_plain_edf_and_contiguous_edf_plus_are_read_as_before(tmp_path):
    chans = channels(90)
    plain = read_edf(write_raw_edf(tmp_path / "plain.edf", chans))
    contiguous = [float(r) for r in range(90)]
    for name, extra, mark in [("c.edf", [annotation_channel(contiguous)], "EDF+C"),
                              ("c_no_annotations.edf", [], "EDF+C"),
                              ("c_broken_annotations.edf", [annotation_channel([None] * 90)], "EDF+C"),
                              ("d_contiguous.edf", [annotation_channel(contiguous)], "EDF+D")]:
        rec = read_edf(write_raw_edf(tmp_path / name, chans + extra, edf_plus=mark))
        assert rec["gaps"] == [] and rec["duration_s"] == plain["duration_s"] == 90.0, name
        assert np.array_equal(rec["ppg"], plain["ppg"]) and np.array_equal(rec["ecg"], plain["ecg"]), name


@pytest.mark.parametrize("case, kind, words", [
    ("out_of_order", "edf_records_out_of_order", "data record 61 starts at 10 s, before record 60"),
    ("overlap", "edf_records_overlap", "data record 61 starts at 59.5 s, inside record 60"),
    ("no_tal", "edf_no_timekeeping", "data record 61 does not start with a time-keeping annotation"),
    ("no_annotation_signal", "edf_no_timekeeping", "has no 'EDF Annotations' signal"),
    ("days_apart", "edf_span_too_long", "more than 48 h is not one night"),
    ("c_with_a_pause", "edf_not_contiguous", "data record 61 starts at 150 s, not 60 s"),
])
def test_untrustworthy_time_keeping_is_refused_by_kind(tmp_path, case, kind, words):
    onsets: list[float | None] = two_part_onsets(60, 90.0, 60)
    extra, mark = None, "EDF+D"
    if case == "out_of_order":
        onsets[60] = 10.0
    elif case == "overlap":
        onsets = two_part_onsets(60, -0.5, 60)
    elif case == "no_tal":
        onsets[60] = None
    elif case == "no_annotation_signal":
        extra = []
    elif case == "days_apart":
        onsets = two_part_onsets(60, 49 * 3600.0, 60)
    elif case == "c_with_a_pause":
        mark = "EDF+C"
    path = write_raw_edf(tmp_path / "bad.edf", channels(120) + ([annotation_channel(onsets)] if extra is None
                                                                else extra), edf_plus=mark)
    with pytest.raises(BadRecordingError) as info:
        read_edf(path)
    assert info.value.kind == kind and words in str(info.value) and "bad.edf" in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# Staging and extraction of a night with a 54-min pause


def paused_night(path: Path) -> Path:
    """An EDF+D: 3 min from the start time, a 54-min pause, 3 more min (timeline 60 min = 120 epochs). The
    samples on either side of the pause are equal, so the bridge through it is constant: it must not count as a
    flat PPG (the pause is 90% of the timeline)."""
    seconds = PART_MIN * 60
    onsets = two_part_onsets(seconds, GAP_MIN * 60.0, seconds)
    chans = channels(2 * seconds)
    for c in chans:
        c["digital"][seconds * c["spr"]] = c["digital"][seconds * c["spr"] - 1]
    return write_raw_edf(path, chans + [annotation_channel(onsets)], edf_plus="EDF+D")


GAP_EPOCHS = list(range(2 * PART_MIN, N_WIN - 2 * PART_MIN))  # epochs 6..113: the pause
LATER_PART = list(range(N_WIN - 2 * PART_MIN, N_WIN))  # epochs 114..119: 57-60 min after the start


def test_inference_stages_each_part_at_its_real_time_and_the_pause_as_a_gap(tmp_path):
    import yaml

    import inference_ppg_only as inf
    from sleepppg.config import load_config

    (tmp_path / "edfs").mkdir()
    edf = paused_night(tmp_path / "edfs" / "mesa-sleep-0042.edf")
    checkpoint = write_tiny_checkpoint(tmp_path / "best_model.pth", N_WIN)
    repo = Path(inf.__file__).resolve().parent
    cfg = load_config(repo / "configs" / "config_demo.yaml", {
        "inference.cache_root": str(tmp_path / "cache"), "inference.best_model": str(checkpoint),
        "gpu.mixed_precision": False, "preprocessing.workers": 1})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code = inf.main(["--config", str(tmp_path / "config.yaml"), "--out", str(out), "--device", "cpu",
                     "--edf", str(edf)])
    run_dir = next(out.iterdir())
    item = json.loads((run_dir / "result.json").read_text())["nights"][0]
    assert code == 0 and item["n_epochs_staged"] == N_WIN and not item["truncated"]
    assert item["gap_epochs"] == GAP_EPOCHS
    assert len(item["gaps"]) == 1 and item["gaps"][0][0] == pytest.approx(180, abs=0.05)
    assert item["gaps"][0][1] == pytest.approx(GAP_MIN * 60, abs=0.05)
    header, rows = read_csv(run_dir / "csv" / "0042" / "0042.csv")
    assert len(rows) == N_WIN
    gap_rows = [int(r[0]) for r in rows if r[3] == "Gap"]
    assert gap_rows == GAP_EPOCHS and all(r[7:] == [""] * 5 for r in rows if r[3] == "Gap")  # probabilities, pulse
    staged = [r for r in rows if r[3] != "Gap"]
    assert [int(r[0]) for r in staged] == list(range(2 * PART_MIN)) + LATER_PART
    assert float(staged[2 * PART_MIN][1]) == pytest.approx(57 / 60)  # the later part starts 57 min in
    assert np.allclose([sum(float(v) for v in r[7:11]) for r in staged], 1.0, atol=1e-5)
    assert item["sleep_report"]["n_epochs_with_stage"] == 4 * PART_MIN


def test_extraction_keeps_the_xml_stages_of_the_later_part_at_its_real_time(tmp_path):
    from sleepppg.extraction import process_subject
    from sleepppg.formats import preprocess_file
    from sleepppg.parts import read_part

    edf = paused_night(tmp_path / "mesa-sleep-0042.edf")
    # the XML scores the whole hour from the start time: Wake, then N2 during the pause, then REM
    xml = write_xml(tmp_path / "mesa-sleep-0042-nsrr.xml", [("Wake|0", 0.0, 180.0),
                                                            ("Stage 2 sleep|2", 180.0, GAP_MIN * 60.0),
                                                            ("REM sleep|5", 3420.0, 180.0)])
    job = {"id": "0042", "edf": str(edf), "xml": str(xml), "part": str(tmp_path / "parts" / "0042.npz"),
           "signature": "x", "windows_per_subject": N_WIN, "resample_method": "linear",
           "ppg_channels": ["pleth"], "format": "mesa"}
    result = process_subject(job)
    staged_as_any_format = preprocess_file(edf, N_WIN, patterns=("pleth",))  # --ppg reads an EDF+D alike
    assert staged_as_any_format["gap_epochs"] == GAP_EPOCHS and len(staged_as_any_format["gaps"]) == 1
    assert result["ok"], result
    assert any("EDF+D: 1 pause(s)" in w and "54.0 min" in w for w in result["warnings"])
    _, arrays = read_part(tmp_path / "parts" / "0042.npz", N_WIN)
    labels = arrays["labels"]
    assert (labels[:2 * PART_MIN] == 0).all() and (labels[LATER_PART] == 3).all()
    assert (labels[GAP_EPOCHS] == IGNORE_INDEX).all()  # no signal there: the XML's N2 is not learnt from
    for key in ("ppg", "ecg"):
        windows = arrays[key]
        assert not windows[GAP_EPOCHS].any() and np.abs(windows[LATER_PART]).sum(axis=1).min() > 0


# ----------------------------------------------------------------------------------------------------------
# Tables whose clock goes back


def write_stamped(path: Path, t: np.ndarray, fs: float = 32.0) -> Path:
    x = np.sin(2 * np.pi * 1.1 * np.arange(t.size) / fs)
    path.write_text("time,pleth\n" + "".join(f"{a:.5f},{b:.5f}\n" for a, b in zip(t, x)))
    return path


def test_a_table_whose_clock_restarts_or_goes_back_is_refused_by_row(tmp_path):
    from sleepppg.formats import read_recording

    fs = 32.0
    half = np.arange(int(300 * fs)) / fs
    restart = write_stamped(tmp_path / "restart.csv", np.concatenate([half, half]))
    back = write_stamped(tmp_path / "back.csv", np.concatenate([half, half + 200.0]))
    for path, words in [(restart, "data row 9601, from 299.969 s to 0 s"),
                        (back, "data row 9601, from 299.969 s to 200 s")]:
        with pytest.raises(BadRecordingError) as info:
            read_recording(path)
        assert info.value.kind == "stamps_go_back" and words in str(info.value) and path.name in str(info.value)
    # rows out of order by less than a sampling step (jitter) and a forward jump (a gap) are read
    t = np.concatenate([half, half + 400.0])
    t[[10, 11]] = t[[11, 10]]
    rec = read_recording(write_stamped(tmp_path / "jitter.csv", t))
    assert rec.fs == fs and len(rec.info["gaps"]) == 1 and rec.info["gaps"][0][1] == pytest.approx(100, abs=0.1)


def test_a_dreamt_file_whose_clock_restarts_is_refused(tmp_path):
    from test_formats import write_dreamt

    from sleepppg.dreamt import read_dreamt

    path = write_dreamt(tmp_path / "S010_whole_df.csv", [("P", 10), ("W", 60), ("N2", 60)])
    lines = path.read_text().splitlines()
    body = lines[1:]
    path.write_text("\n".join([lines[0]] + body + body) + "\n")  # the same stamps again: the clock restarted
    with pytest.raises(BadRecordingError) as info:
        read_dreamt(path, n_windows=10)
    assert info.value.kind == "stamps_go_back" and f"data row {len(body) + 1}" in str(info.value)
    assert "S010_whole_df.csv: TIMESTAMP" in str(info.value)
