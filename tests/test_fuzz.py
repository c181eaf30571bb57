"""Fuzz tests: mutated EDF headers and bodies and mutated NSRR XML never make extraction's per-subject step
(`process_subject`) or the shared `preprocess_recording` (which EDF inference uses) raise anything but the
documented BadRecordingError, and never give a result of the wrong shape (windows x 1024, one label per window).
PPG tables written every way people export them (delimiters, decimal marks, quoting, stamp units, header or
not) are read at the right length and rate, or refused with BadRecordingError.

Bounded for CI: a tiny 2-minute EDF, a few dozen examples per test, no deadline.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import channels_for_raw_edf, edf_field_offset, write_raw_edf, write_xml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleepppg.annotations import xml_to_labels
from sleepppg.constants import IGNORE_INDEX, SAMPLES_PER_WINDOW
from sleepppg.edf import EDF_SIGNAL_FIELDS
from sleepppg.errors import BadRecordingError
from sleepppg.extraction import process_subject
from sleepppg.formats import read_recording
from sleepppg.parts import read_part
from sleepppg.preprocessing import preprocess_recording

N_WINDOWS = 6  # 3 minutes of windows for a 2-minute night: padding is exercised too
NS = 3  # signals in channels_for_raw_edf(): EKG, Pleth, SpO2
FIELDS = ["version", "header_bytes", "n_records", "record_s", "n_signals"]
SIGNAL_FIELDS = [name for name, _ in EDF_SIGNAL_FIELDS]
TRICKY = ["0", "-1", "1", "nan", "inf", "-inf", "1e309", "1e-300", "", " ", "abc", "99999999", "-0", "0.0",
          "2.5", "-32768", "32767", "\x00\x00", "\xff\xfe", "1_0", "+5"]
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    edf = write_raw_edf(root / "mesa-sleep-0001.edf", channels_for_raw_edf(seconds=120)).read_bytes()
    xml = write_xml(root / "mesa-sleep-0001-nsrr.xml",
                    [("Wake|0", 0, 30), ("Stage 2 sleep|2", 30, 60), ("REM sleep|5", 90, 30)]).read_text()
    return edf, xml


def _set(data: bytes, offset: int, raw: bytes) -> bytes:
    return data[:offset] + raw + data[offset + len(raw):]


def mutated_edf(draw, original: bytes) -> bytes:
    """1-3 mutations of a valid EDF: a header field set to a tricky value, random header or body bytes, the
    file cut anywhere, or bytes appended."""
    data = original
    header_bytes = 256 * (NS + 1)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["field", "signal_field", "header_bytes", "body_bytes", "cut", "append"]))
        if how == "field":
            offset, width = edf_field_offset(NS, draw(st.sampled_from(FIELDS)))
            data = _set(data, offset, draw(st.sampled_from(TRICKY)).encode("latin-1").ljust(width)[:width])
        elif how == "signal_field":
            offset, width = edf_field_offset(NS, draw(st.sampled_from(SIGNAL_FIELDS)), draw(st.integers(0, NS - 1)))
            data = _set(data, offset, draw(st.sampled_from(TRICKY)).encode("latin-1").ljust(width)[:width])
        elif how == "header_bytes" and len(data) > 0:
            offset = draw(st.integers(0, min(header_bytes, len(data)) - 1))
            data = _set(data, offset, draw(st.binary(min_size=1, max_size=8)))[:len(data)]
        elif how == "body_bytes" and len(data) > header_bytes:
            offset = draw(st.integers(header_bytes, len(data) - 1))
            data = _set(data, offset, draw(st.binary(min_size=1, max_size=64)))[:len(data)]
        elif how == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif how == "append":
            data = data + draw(st.binary(min_size=1, max_size=600))
    return data


def mutated_xml(draw, original: str) -> str:
    """1-3 mutations of a valid NSRR XML: text cut out or inserted, a Start/Duration set to a tricky value,
    a tag or event type renamed."""
    text = original
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["delete", "insert", "number", "tag"]))
        i = draw(st.integers(0, len(text)))
        if how == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)):]
        elif how == "insert":
            text = text[:i] + draw(st.text(max_size=12)) + text[i:]
        elif how == "number":
            for old in ("<Start>30", "<Duration>60", "<Start>0", "<Duration>30"):
                if old in text and draw(st.booleans()):
                    tag = old.split(">")[0] + ">"
                    text = text.replace(old, tag + draw(st.sampled_from(TRICKY + ["1e308", "-1e308", "86400"])), 1)
        else:
            text = text.replace(draw(st.sampled_from(["Stages|Stages", "ScoredEvent", "EventConcept"])),
                                draw(st.sampled_from(["", "Stages", "x"])), 1)
    return text


def _check_recording(rec: dict) -> None:
    assert rec["ppg_windows"].shape == (N_WINDOWS, SAMPLES_PER_WINDOW) and rec["ppg_windows"].dtype == np.float32
    assert np.isfinite(rec["ppg_windows"]).all()
    assert 1 <= rec["n_recorded_windows"] <= N_WINDOWS
    if rec["has_ecg"]:
        assert rec["ecg_windows"].shape == (N_WINDOWS, SAMPLES_PER_WINDOW) and np.isfinite(rec["ecg_windows"]).all()
    assert all(isinstance(w, str) and w for w in rec["warnings"])


def _run_subject(folder: Path, edf: bytes, xml: str) -> dict:
    (folder / "s.edf").write_bytes(edf)
    (folder / "s.xml").write_bytes(xml.encode("utf-8", errors="surrogatepass"))
    job = {"id": "0001", "edf": str(folder / "s.edf"), "xml": str(folder / "s.xml"), "part": str(folder / "p.npz"),
           "signature": "x", "windows_per_subject": N_WINDOWS, "resample_method": "linear", "ppg_channels": ["pleth"]}
    result = process_subject(job)  # must not raise for any content
    if result["ok"]:
        meta, arrays = read_part(folder / "p.npz", N_WINDOWS)
        assert arrays["ppg"].shape == (N_WINDOWS, SAMPLES_PER_WINDOW) and arrays["labels"].shape == (N_WINDOWS,)
        assert np.isin(arrays["labels"], [IGNORE_INDEX, 0, 1, 2, 3]).all() and (arrays["labels"] >= 0).any()
        assert (arrays["labels"][meta["n_recorded_windows"]:] == IGNORE_INDEX).all()
        json.dumps(meta)
    else:
        assert result["kind"] and result["reason"].strip() and result["file"]
    return result


@FUZZ
@given(data=st.data())
def test_mutated_edf_never_escapes_bad_recording_error(originals, data):
    edf = mutated_edf(data.draw, originals[0])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.edf"
        path.write_bytes(edf)
        try:
            rec = preprocess_recording(path, n_windows=N_WINDOWS, with_ecg=data.draw(st.booleans()))
        except BadRecordingError as err:
            assert err.kind and str(err).strip()
        else:
            _check_recording(rec)
        _run_subject(Path(folder), edf, originals[1])


@FUZZ
@given(data=st.data())
def test_mutated_xml_never_escapes_bad_recording_error(originals, data):
    xml = mutated_xml(data.draw, originals[1])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "s.xml"
        path.write_bytes(xml.encode("utf-8", errors="surrogatepass"))
        try:
            labels = xml_to_labels(path, N_WINDOWS)
        except BadRecordingError as err:
            assert err.kind and str(err).strip() and err.path == str(path)
        else:
            assert labels.shape == (N_WINDOWS,) and labels.dtype == np.int64
            assert np.isin(labels, [IGNORE_INDEX, 0, 1, 2, 3]).all()
        _run_subject(Path(folder), originals[0], xml)


# ----------------------------------------------------------------------------------------------------------
# PPG tables as people export them (sleepppg.tables through read_recording)

TABLE_FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
STAMP_UNITS = {"s": (1.0, "time"), "ms": (1e3, "time_ms"), "min": (1 / 60, "time_min")}  # factor, header


def _field(value: float, decimal: str, thousands: bool, quote: bool) -> str:
    text = f"{value:,.3f}" if thousands else f"{value:.9g}"
    if decimal == ",":
        text = text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
    return f'"{text}"' if quote else text


@TABLE_FUZZ
@given(data=st.data())
def test_tables_read_right_or_refuse_by_name(data):
    """Random delimiters (comma, semicolon, tab, space), decimal marks, quoting, thousands separators, stamps in
    s, ms or min, with or without a header: read_recording either refuses with BadRecordingError or returns
    the written number of samples (within one) at the written rate (within 0.1%)."""
    draw = data.draw
    delimiter = draw(st.sampled_from([",", ";", "\t", " "]))
    decimal = draw(st.sampled_from([".", ","]))
    quote = draw(st.booleans()) or (decimal == "," and delimiter == ",")  # a comma table quotes decimal commas
    thousands = quote and delimiter == "," and decimal == "." and draw(st.booleans())  # "1,234.500"
    unit = draw(st.sampled_from(sorted(STAMP_UNITS)))
    header = draw(st.booleans())
    with_time = draw(st.booleans())
    fs = draw(st.sampled_from([16.0, 25.0, 32.0, 64.0, 128.0, 250.0]))
    n = int(fs * draw(st.integers(31, 45)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    ppg = np.round(1500 + 900 * np.sin(np.arange(n) / fs * 7.0) + rng.normal(0, 20, n), 3)
    factor, time_name = STAMP_UNITS[unit]
    rows = [[_field(v, decimal, thousands, quote)] for v in ppg]
    if with_time:
        rows = [[_field(i / fs * factor, decimal, False, quote)] + row for i, row in enumerate(rows)]
    lines = [delimiter.join(row) for row in rows]
    if header:
        lines.insert(0, delimiter.join(([time_name] if with_time else []) + ["pleth"]))
    suffix = draw(st.sampled_from([".csv", ".txt"] + ([".tsv"] if delimiter == "\t" else [])))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"night{suffix}"
        path.write_text("\n".join(lines) + "\n")
        given_fs = None if with_time and draw(st.booleans()) else fs
        try:
            rec = read_recording(path, fs=given_fs)
        except BadRecordingError as err:
            assert err.kind and path.name in str(err)
            return
    assert abs(rec.fs - fs) <= 1e-3 * fs, (rec.fs, fs, rec.info)
    assert abs(rec.signal_T.size - n) <= 1 and np.isfinite(rec.signal_T).all(), (rec.signal_T.size, n)
    assert rec.info["filled_samples"] == 0
    m = min(n, rec.signal_T.size)
    np.testing.assert_allclose(rec.signal_T[:m], ppg[:m], atol=2e-3)
