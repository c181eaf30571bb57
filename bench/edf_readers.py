"""Our EDF/BDF reader (sleepppg.edf.read_edf) against edfio on the same hostile, fuzzed and valid files, same run.

The project keeps its own code only where the field's library fails cases ours passes; this measures it.
- "ours": `sleepppg.edf.read_edf(path)` (PPG and, if present and readable, ECG);
- "edfio": `edfio.read_edf(path)` (`edfio.read_bdf` for a file starting with BDF's 0xFF), PPG and ECG chosen
  as ours chooses them (`find_ppg_channel` on labels and rates, `find_ecg_channel`), their `.data`, in volts for
  uV/mV channels as ours returns them. An ECG whose `.data` raises is dropped, as ours drops an unreadable ECG.

Cases (2- to 12-min nights, 1-s records): (1) the valid and hostile files of tests/test_extract.py, built with
tests/helpers.py (valid EDF, BDF 24-bit, EDF+D with a 30-s pause, duplicate labels, saturated PPG, every absurd
header field of test_absurd_header_fields_make_a_bad_subject, record counts that disagree with the file size,
bytes after the last record, truncated and non-EDF files), each with an expected answer: the error kind the
tests assert for ours, or the values the file holds (the EDF formula on the known stored integers; for
edfio-written files our reader on the intact file, which the tests check against mne to 1e-12); (2)
`--fuzz-examples` files from tests/test_fuzz.py's `mutated_edf`, drawn by hypothesis with derandomize=True (the
same files every run). Where both read a fuzzed file they are compared with each other; where ours rejects it
and edfio reads it, edfio's values are compared with what its data records hold (`repaired_truth`).

Each read runs in a worker subprocess (address space WORKER_MEMORY_BYTES, CASE_TIMEOUT_S per file), so a
crash, hang or runaway allocation is reported for that file. "pass" = a clear error (ours: BadRecordingError;
edfio: ValueError or OSError) where an error is expected, or the expected values (to AGREE_REL of their range)
and rates; fewer or more whole records of real data than expected, with a warning, pass with a note (a policy
difference). "FAIL" = wrong values or rates (silent or warned), an error on a readable file, another exception
type (ZeroDivisionError, IndexError...), a crash or a hang.

Timing: one MESA-sized night (make_synthetic_mesa.write_subject: 10.5 h, MESA's 9 channels, PPG and ECG at
256 Hz, ~68 MB); each reader in a fresh subprocess reads PPG+ECG once (peak RSS, VmHWM, over the baseline;
pages of a memory-mapped file count in RSS), once under tracemalloc (Python/numpy allocations), then
TIMING_REPEATS times (best kept).

Usage: python bench/edf_readers.py [--fuzz-examples 300] [--hours 10.5] [--json results.json]   (about 20 s)
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import resource
import selectors
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FUZZ_EXAMPLES = 300  # a few seconds for both readers on a 2-core VM
CASE_TIMEOUT_S = 20.0  # a 2-min file reads in milliseconds: longer is a hang (e.g. 10^8 signal headers parsed)
WORKER_MEMORY_BYTES = 3 * 2**30  # address-space limit of a worker: a reader wanting more for a 250-kB file is broken
AGREE_REL = 1e-9  # values agree when max |diff| <= this x their range (float64 rounding gives ~1e-16)
NIGHT_HOURS = 10.5  # a MESA night is usually longer than the 10 h the model keeps
TIMING_REPEATS = 3
NS = 3  # signals in helpers.channels_for_raw_edf(): EKG, Pleth, SpO2
RESERVED_OFFSET, RESERVED_WIDTH = 192, 44  # the fixed header's "reserved" field (EDF+C / EDF+D)


def _repo_paths() -> None:
    for path in (REPO, REPO / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


# ----------------------------------------------------------------------------------------------------------
# The two readers (run inside a worker subprocess)


def read_ours(path: Path) -> dict:
    from sleepppg.edf import read_edf
    from sleepppg.errors import BadRecordingError

    try:
        rec = read_edf(path)
    except BadRecordingError as err:
        return {"outcome": "error", "what": err.kind, "message": str(err)}
    return {"outcome": "read", "ppg": rec["ppg"], "ecg": rec["ecg"], "ppg_fs": rec["ppg_fs"], "ecg_fs": rec["ecg_fs"],
            "warnings": rec["warnings"]}


def _edfio_physical(signal) -> np.ndarray:
    """edfio's physical values in volts for uV/mV channels (as ours returns them), scaled in place: edfio hands
    back a fresh read-only float64 array each time `.data` is read, so making it writable costs no copy."""
    from sleepppg.edf import VOLTS_PER_UNIT

    x = signal.data
    factor = VOLTS_PER_UNIT.get(signal.physical_dimension, 1.0)
    if factor != 1.0:
        try:
            x.setflags(write=True)
            x *= factor
        except ValueError:  # not the owner of its memory: scale a copy
            x = x * factor
    return x


def _edfio_uncalibrated(signal) -> bool:
    """Whether edfio's `.data` of this signal is its stored integers: edfio returns them as they are, with no
    error, when a scale field does not parse (and with a warning when digital or physical min = max)."""
    try:
        return signal.digital_min == signal.digital_max or signal.physical_min == signal.physical_max
    except ValueError:
        return True


def read_edfio(path: Path) -> dict:
    """edfio with our channel choice. Warnings edfio emits are returned with the values, and the channels it
    returned uncalibrated (a diagnostic for the report, not part of the read)."""
    import edfio

    from sleepppg.channels import find_ecg_channel, find_ppg_channel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open(path, "rb") as fh:
            is_bdf = fh.read(1) == b"\xff"
        edf = (edfio.read_bdf if is_bdf else edfio.read_edf)(path)
        signals = list(edf.signals)
        labels = [s.label for s in signals]
        rates = [s.sampling_frequency for s in signals]
        ppg_label = find_ppg_channel(labels, rates)
        if ppg_label is None:
            return {"outcome": "error", "what": "no_ppg_channel", "message": f"channels {labels}"}
        ppg_signal = signals[labels.index(ppg_label)]
        ppg = _edfio_physical(ppg_signal)
        ecg_label = find_ecg_channel(labels)
        ecg = ecg_fs = ecg_problem = ecg_signal = None
        if ecg_label is not None:
            ecg_signal = signals[labels.index(ecg_label)]
            try:
                ecg, ecg_fs = _edfio_physical(ecg_signal), ecg_signal.sampling_frequency
            except Exception as err:  # reported as this reader's ECG outcome, the PPG still counts
                ecg_problem = type(err).__name__
    uncalibrated = [name for name, signal, x in (("PPG", ppg_signal, ppg), ("ECG", ecg_signal, ecg))
                    if x is not None and _edfio_uncalibrated(signal)]
    return {"outcome": "read", "ppg": ppg, "ecg": ecg, "ppg_fs": ppg_signal.sampling_frequency, "ecg_fs": ecg_fs,
            "ecg_problem": ecg_problem, "warnings": [str(w.message) for w in caught], "uncalibrated": uncalibrated}


READERS = {"ours": read_ours, "edfio": read_edfio}


def worker_loop() -> None:
    """Read requests {"reader", "path", "out"} from stdin; answer each with one JSON line on stdout, the arrays
    saved to `out` (npz). Any exception a reader raises is the answer, with its type."""
    _repo_paths()
    import edfio  # noqa: F401  imported before the memory limit and the clock

    import sleepppg.edf  # noqa: F401

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            rec = READERS[request["reader"]](Path(request["path"]))
        except Exception as err:  # the answer to report, not a failure of this benchmark
            rec = {"outcome": "exception", "what": type(err).__name__, "message": str(err)[:300],
                   "clear": isinstance(err, (ValueError, OSError)),
                   "where": traceback.extract_tb(err.__traceback__)[-1].name}
        arrays = {k: rec.pop(k) for k in ("ppg", "ecg") if k in rec}
        if rec["outcome"] == "read":
            np.savez(request["out"], **{k: v for k, v in arrays.items() if v is not None})
        print(json.dumps(rec), flush=True)


class Worker:
    """One worker subprocess, restarted after a crash or a hang."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        with open(self.log_path, "a") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker did not start; see {self.log_path}")

    def read(self, reader: str, path: Path) -> dict:
        if self.proc is None:
            self._start()
        out = path.with_name(f"{path.name}.{reader}.npz")
        self.proc.stdin.write(json.dumps({"reader": reader, "path": str(path), "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=CASE_TIMEOUT_S)
        if not ready:
            self.close()
            return {"outcome": "hang", "what": f"no answer in {CASE_TIMEOUT_S:g} s"}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "what": f"worker died (exit status {rc})"}
        rec = json.loads(line)
        if rec["outcome"] == "read":
            with np.load(out) as z:
                rec["ppg"], rec["ecg"] = z["ppg"], z.get("ecg")
            out.unlink()
        return rec

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# ----------------------------------------------------------------------------------------------------------
# Cases


def _truth_from_channels(channels: list[dict], n_records: int | None = None) -> dict:
    """The expected PPG (Pleth) and ECG (EKG, mV -> V) by the EDF formula, sample by sample on the stored
    integers: physical_min + (digital - digital_min) x (physical_max - physical_min) / (digital_max - digital_min)."""
    truth = {}
    for key, label in (("ppg", "Pleth"), ("ecg", "EKG")):
        c = next(c for c in channels if c["label"] == label)
        d = np.asarray(c["digital"], dtype=np.float64)
        x = c["pmin"] + (d - c["dmin"]) * (c["pmax"] - c["pmin"]) / (c["dmax"] - c["dmin"])
        x = x * (1e-3 if c["dim"] == "mV" else 1.0)
        truth[f"{key}_all"] = x  # every whole record of the intact file
        truth[key] = x if n_records is None else x[:n_records * c["spr"]]
        truth[f"{key}_fs"], truth[f"{key}_spr"] = float(c["spr"]), c["spr"]
    return truth


def _truth_from_ours(path: Path) -> dict:
    """Our reader's values, rates and samples per record (from the header) for a file it reads."""
    from sleepppg.edf import read_edf, read_edf_header

    rec = read_edf(path)
    with open(path, "rb") as fh:
        header = read_edf_header(fh, path, path.stat().st_size)
    truth = {}
    for ch in ("ppg", "ecg"):
        label = rec[f"{ch}_channel"]
        spr = None if label is None else header.signals[header.labels.index(label)].samples_per_record
        truth.update({ch: rec[ch], f"{ch}_all": rec[ch], f"{ch}_fs": rec[f"{ch}_fs"], f"{ch}_spr": spr})
    return truth


def _edf_plus_d(channels: list[dict], gap_after: int, gap_s: float) -> tuple[list[dict], Callable]:
    """The channels plus an "EDF Annotations" signal whose time stamps jump by `gap_s` after record `gap_after`
    (EDF+D), and the edit that marks the header EDF+D."""
    n_records = len(channels[0]["digital"]) // channels[0]["spr"]
    spr = 30  # 60 bytes of time-stamped annotation lists per record
    tals = b""
    for r in range(n_records):
        onset = r + (gap_s if r >= gap_after else 0)
        tals += f"+{onset:g}\x14\x14\x00".encode().ljust(2 * spr, b"\x00")
    annotations = dict(label="EDF Annotations", spr=spr, digital=np.frombuffer(tals, "<i2").astype(np.int64),
                       pmin=-1, pmax=1, dmin=-32768, dmax=32767, dim="")

    def mark(data: bytes) -> bytes:
        return data[:RESERVED_OFFSET] + b"EDF+D".ljust(RESERVED_WIDTH) + data[RESERVED_OFFSET + RESERVED_WIDTH:]

    return channels + [annotations], mark


def _on_timeline(truth: dict, gap_after: int, gap_s: int) -> dict:
    """`truth` of 1-s records with a `gap_s` pause after record `gap_after`: NaN samples in the pause."""
    out = dict(truth)
    for ch in ("ppg", "ecg"):
        spr = truth[f"{ch}_spr"]
        x = np.insert(truth[ch], gap_after * spr, np.full(gap_s * spr, np.nan))
        out[ch] = out[f"{ch}_all"] = x
    return out


def hand_cases(root: Path) -> list[dict]:
    """The valid and hostile files of tests/test_extract.py, each with its expected answer: `expect` is "read"
    (then `truth` holds the values and rates) or the error kind the tests assert for ours (then `truth` holds
    what the intact file held, to judge values a reader returns anyway)."""
    from helpers import channels_for_raw_edf, set_field, write_edf, write_raw_edf

    cases = []

    def add(name: str, data: bytes | None, expect: str, truth: dict | None, suffix: str = ".edf") -> None:
        path = root / f"hand{len(cases):02d}{suffix}"
        if data is not None:
            path.write_bytes(data)
        cases.append({"name": name, "path": path, "expect": expect, "truth": truth})

    channels = channels_for_raw_edf()
    raw = write_raw_edf(root / "raw.edf", channels).read_bytes()
    truth = _truth_from_channels(channels)
    night = write_edf(root / "night.edf", minutes=12)
    night_truth = _truth_from_ours(night)

    # valid files
    add("valid: edfio-written 12-min night (write_edf)", night.read_bytes(), "read", night_truth)
    add("valid: hand-written EDF (write_raw_edf)", raw, "read", truth)
    bdf_channels = channels_for_raw_edf(bdf=True)
    add("valid: BDF 24-bit", write_raw_edf(root / "x.bdf", bdf_channels, bdf=True).read_bytes(), "read",
        _truth_from_channels(bdf_channels), suffix=".bdf")
    plus_d, mark = _edf_plus_d(channels, gap_after=60, gap_s=30)
    add("EDF+D: 30-s pause after record 60 (expected: the records on their timeline, the pause missing)",
        mark(write_raw_edf(root / "d.edf", plus_d).read_bytes()), "read", _on_timeline(truth, 60, 30))
    dup = dict(channels[1], label="PLETH", digital=channels[1]["digital"] // 2)
    add("duplicate labels: 'Pleth' and 'PLETH\\0\\0' (expected: the first)",
        set_field(write_raw_edf(root / "dup.edf", channels + [dup]).read_bytes(), 4, "label", b"PLETH\x00\x00 ", 3),
        "read", truth)
    saturated = [dict(c) for c in channels]
    digital = saturated[1]["digital"].copy()
    digital[: digital.size // 5] = 32767
    digital[digital.size // 5: digital.size // 5 + 2000] = -32768
    saturated[1]["digital"] = digital
    add("saturated PPG (27% at the digital limits)", write_raw_edf(root / "sat.edf", saturated).read_bytes(), "read",
        _truth_from_channels(saturated))

    # absurd header fields (test_absurd_header_fields_make_a_bad_subject)
    for field, value, signal, kind in [
        ("n_signals", "0", None, "bad_edf_header"), ("n_signals", "x1", None, "bad_edf_header"),
        ("n_signals", "999", None, "bad_edf_header"), ("header_bytes", "2048", None, "bad_edf_header"),
        ("header_bytes", "abc", None, "bad_edf_header"), ("record_s", "0", None, "bad_edf_header"),
        ("record_s", "-1", None, "bad_edf_header"), ("record_s", "inf", None, "bad_edf_header"),
        ("record_s", "nan", None, "bad_edf_header"), ("record_s", "one", None, "bad_edf_header"),
        ("record_s", "1e-300", None, "bad_edf_header"), ("n_records", "many", None, "bad_edf_header"),
        ("n_records", "0", None, "bad_edf_header"), ("n_records", "500", None, "truncated_edf"),
        ("version", "9", None, "unreadable_edf"), ("samples_per_record", "0", 1, "bad_edf_header"),
        ("samples_per_record", "x", 1, "bad_edf_header"), ("samples_per_record", "-256", 1, "bad_edf_header"),
        ("digital_min", "32767", 1, "bad_edf_header"), ("physical_min", "100", 1, "bad_edf_header"),
        ("physical_max", "nan", 1, "bad_edf_header"), ("digital_max", "high", 1, "bad_edf_header"),
    ]:
        where = "" if signal is None else " of Pleth"
        add(f"{field}{where} = {value!r}", set_field(raw, NS, field, value, signal), kind, truth)

    # problems on channels other than the PPG (test_header_problems_on_unused_channels_only_warn_or_pass)
    add("SpO2: digital_min = 1000, physical_max = 'zz' (unused channel)",
        set_field(set_field(raw, NS, "digital_min", "1000", 2), NS, "physical_max", "zz", 2), "read", truth)
    add("EKG has no scale: digital_max = -32768 (expected: ECG dropped)", set_field(raw, NS, "digital_max", "-32768", 0),
        "read", {**truth, "ecg": None, "ecg_all": None})

    # record counts and trailing bytes (test_record_count_and_trailing_bytes)
    record_bytes = (256 + 256 + 1) * 2
    add("700 x b'\\x7f\\xff' after the 120 declared records", raw + b"\x7f\xff" * 700, "read", truth)
    add("record count -1 (unknown)", set_field(raw, NS, "n_records", "-1"), "read", truth)
    add("record count -1 and a partial record after the last",
        set_field(raw, NS, "n_records", "-1") + b"\x01" * 100, "read", truth)
    add("record count 100, file holds 120", set_field(raw, NS, "n_records", "100"), "read",
        _truth_from_channels(channels, n_records=100))
    add("half a record missing (truncated download)", raw[:-record_bytes // 2], "truncated_edf", truth)
    for size in (0, 100, 300):
        add(f"cut to {size} bytes (inside the header)", raw[:size], "truncated_edf", truth)

    # other bad inputs (test_formats_attrs_and_bad_inputs)
    data = night.read_bytes()
    add("edfio-written night cut in half", data[: len(data) // 2], "truncated_edf", night_truth)
    add("not an EDF: b'garbage' x 500", b"garbage" * 500, "unreadable_edf", None)
    add("missing file", None, "missing_edf", None)
    return cases


def repaired_truth(content: bytes, original: bytes, path: Path) -> tuple[dict | None, str]:
    """What a fuzzed file's data records hold, to judge a reader that reads a file ours rejects: our reader's
    values for the fuzzed file with its unusable structural fields put back to the original's (a version that
    is not EDF/BDF, another number of signals, a header size other than 256 x (signals + 1), a record duration
    that is not a positive number or gives a rate over MAX_SAMPLING_RATE_HZ, samples per record that are not a
    positive integer; a header cut short is completed) and the record count set to -1 (the complete records
    present). Labels, units, scales and the data bytes stay as fuzzed. Returns (truth or None, why None)."""
    from helpers import edf_field_offset, set_field

    from sleepppg.edf import MAX_SAMPLING_RATE_HZ
    from sleepppg.errors import BadRecordingError

    header_bytes = 256 * (NS + 1)
    head = content[:header_bytes] + original[len(content):header_bytes]

    def field(name: str, signal: int | None = None) -> str:
        offset, width = edf_field_offset(NS, name, signal)
        return head[offset:offset + width].decode("latin-1").strip()

    def restore(name: str, signal: int | None = None) -> bytes:
        offset, width = edf_field_offset(NS, name, signal)
        return head[:offset] + original[offset:offset + width] + head[offset + width:]

    def number(text: str, kind: type) -> float | None:
        try:
            return kind(text)
        except ValueError:
            return None

    if not head.startswith(b"0"):
        head = restore("version")
    if field("n_signals") != str(NS):
        head = restore("n_signals")
    if number(field("header_bytes"), int) != header_bytes:
        head = restore("header_bytes")
    for signal in range(NS):
        spr = number(field("samples_per_record", signal), int)
        if spr is None or spr <= 0:
            head = restore("samples_per_record", signal)
    record_s = number(field("record_s"), float)
    top_rate = max(number(field("samples_per_record", i), int) for i in range(NS)) / (record_s or float("nan"))
    if record_s is None or not (np.isfinite(record_s) and record_s > 0 and top_rate <= MAX_SAMPLING_RATE_HZ):
        head = restore("record_s")
    path.write_bytes(set_field(head, NS, "n_records", "-1") + content[header_bytes:])
    try:
        return _truth_from_ours(path), ""
    except BadRecordingError as err:
        return None, err.kind
    finally:
        path.unlink()


def _describe_draw(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return repr(value) if isinstance(value, str) else str(value)


def fuzz_cases(root: Path, n_examples: int) -> list[dict]:
    """`n_examples` mutated EDFs from tests/test_fuzz.py's `mutated_edf` (derandomized hypothesis, so the same
    files every run; duplicates dropped), each named by the values hypothesis drew."""
    from helpers import channels_for_raw_edf, write_raw_edf
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from test_fuzz import mutated_edf

    original = write_raw_edf(root / "fuzz-original.edf", channels_for_raw_edf(seconds=120)).read_bytes()
    found: dict[str, tuple[bytes, str]] = {}

    @settings(max_examples=n_examples, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def collect(data):
        drawn = []

        def draw(strategy):
            value = data.draw(strategy)
            drawn.append(_describe_draw(value))
            return value

        content = mutated_edf(draw, original)
        found.setdefault(hashlib.sha1(content).hexdigest(), (content, " ".join(drawn)))

    collect()
    cases = []
    for k, (content, drawn) in enumerate(found.values()):
        path = root / f"fuzz{k:03d}.edf"
        path.write_bytes(content)
        truth, why_none = repaired_truth(content, original, root / "repaired.edf")
        cases.append({"name": drawn, "path": path, "expect": None, "truth": truth, "no_truth": why_none})
    return cases


# ----------------------------------------------------------------------------------------------------------
# Judging


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to b's range (inf where either has non-finite values)."""
    if a.size == 0 and b.size == 0:
        return 0.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    span = float(np.ptp(b)) or 1.0
    return float(np.max(np.abs(a - b)) / span)


def judge_values(rec: dict, truth: dict) -> tuple[str, str]:
    """('right' | 'partial' | 'wrong', how) of a reader's values and rates against the expected ones."""
    notes, wrong = [], []
    for ch in ("ppg", "ecg"):
        want, got, name = truth.get(ch), rec.get(ch), ch.upper()
        if want is None:
            if got is not None:
                wrong.append(f"{name} read though it has no scale")
            continue
        if got is None:
            wrong.append(f"{name} missing" + (f" ({rec['ecg_problem']})" if rec.get("ecg_problem") else ""))
            continue
        if rec[f"{ch}_fs"] != truth[f"{ch}_fs"]:
            wrong.append(f"{name} rate {float(rec[f'{ch}_fs']):.3g} Hz")
        spr, n, m = truth[f"{ch}_spr"], got.size, want.size
        pauses = np.isnan(want)  # an EDF+D on its timeline: no samples in its pauses
        if pauses.any():
            if n != m or not np.array_equal(np.isnan(got), pauses):
                wrong.append(f"{name} pauses not placed ({n / spr:g} records of samples where the timeline spans "
                             f"{m / spr:g} records)")
            elif _rel_diff(got[~pauses], want[~pauses]) > AGREE_REL:
                wrong.append(f"{name} values off by {_rel_diff(got[~pauses], want[~pauses]):.2g} of the range")
            continue
        diff = _rel_diff(got[:min(n, m)], want[:min(n, m)])
        if not np.isfinite(got).all():
            wrong.append(f"{name} values NaN or inf")
        elif diff > AGREE_REL:
            wrong.append(f"{name} values off by {diff:.2g} of the range")
        elif n < m:
            notes.append(f"{name} first {n / spr:g} of {m / spr:g} records")
        elif n > m:
            real = truth[f"{ch}_all"]
            extra = f"{(n - m) / spr:g}"
            if real.size >= n and _rel_diff(got, real[:n]) <= AGREE_REL:
                notes.append(f"{name} +{extra} records past the declared count")
            else:
                wrong.append(f"{name} +{extra} records of trailing bytes read as signal")
    if wrong:
        if rec.get("uncalibrated"):
            wrong.append(f"{'+'.join(rec['uncalibrated'])} uncalibrated (stored integers)")
        return "wrong", "; ".join(wrong)
    return ("partial", "; ".join(notes)) if notes else ("right", "right values")


def verdict(rec: dict, case: dict) -> tuple[bool, str]:
    """(passes, short description) of one reader on a case with an expected answer."""
    expect, outcome = case["expect"], rec["outcome"]
    warned = " (warned)" if rec.get("warnings") else " (silent)"
    if outcome in ("hang", "crash"):
        return False, f"{outcome}: {rec['what']}"
    if outcome == "exception":
        if not rec["clear"]:
            return False, f"{rec['what']} in {rec['where']}()"
        return expect != "read", f"{rec['what']}" + ("" if expect != "read" else " on a readable file")
    if outcome == "error":
        return expect != "read", rec["what"]
    if case["truth"] is None:
        return False, "read a file with nothing to read"
    quality, how = judge_values(rec, case["truth"])
    if quality == "right":
        return True, how + ("" if expect == "read" else warned)
    if quality == "partial":
        return bool(rec.get("warnings")), how + warned
    return False, how + warned


def agreement(ours: dict, theirs: dict) -> tuple[str, bool | None]:
    """Where both read: (max |diff| / range over PPG and ECG, or how the lengths or rates differ; whether they
    agree). ("", None) when either did not read."""
    if ours["outcome"] != "read" or theirs["outcome"] != "read":
        return "", None
    parts, same = [], True
    for ch in ("ppg", "ecg"):
        a, b = ours.get(ch), theirs.get(ch)
        if a is None or b is None:
            if (a is None) != (b is None):
                parts.append(f"{ch.upper()} only in {'edfio' if a is None else 'ours'}")
                same = False
            continue
        if a.size != b.size:
            parts.append(f"{ch.upper()} {a.size} vs {b.size} samples")
            same = False
        elif ours[f"{ch}_fs"] != theirs[f"{ch}_fs"]:
            parts.append(f"{ch.upper()} rate {ours[f'{ch}_fs']} vs {theirs[f'{ch}_fs']} Hz")
            same = False
        else:
            diff = _rel_diff(b, a)
            parts.append(f"{ch.upper()} {diff:.1e}")
            same = same and diff <= AGREE_REL
    return ", ".join(parts), same


def fuzz_class(ours: dict, theirs: dict, case: dict) -> tuple[str, str]:
    """(ours, edfio) outcome classes of one fuzzed file, for the summary. Where ours rejects the file and edfio
    reads it, edfio's values are compared with what the data records hold (`repaired_truth`)."""
    truth = case["truth"]
    if ours["outcome"] == "read":
        ours_class = "reads"
    elif ours["outcome"] == "error":
        ours_class = f"rejects: {ours['what']}"
    else:
        ours_class = f"FAIL {ours['outcome']}: {ours['what']}"
    if theirs["outcome"] in ("hang", "crash"):
        return ours_class, f"FAIL {theirs['outcome']}"
    if theirs["outcome"] == "exception":
        return ours_class, (theirs["what"] if theirs["clear"] else f"FAIL {theirs['what']} in {theirs['where']}()")
    if theirs["outcome"] == "error":
        return ours_class, theirs["what"]
    if ours["outcome"] == "read":
        text, same = agreement(ours, theirs)
        return ours_class, "reads, same values" if same else "reads, differs: " + _coarse(text)
    warned = " (warned)" if theirs["warnings"] else " (silent)"
    if theirs["ppg"].size == 0:
        return ours_class, "reads 0 samples" + warned
    if truth is None:
        return ours_class, f"FAIL reads values where none are right (repaired file: {case['no_truth']})" + warned
    quality, how = judge_values(theirs, truth)
    if quality == "right":
        return ours_class, "reads the records' values" + warned
    if quality == "partial":
        return ours_class, _coarse(how) + warned
    return ours_class, "FAIL " + _coarse(how) + warned


def _coarse(text: str) -> str:
    """A description without its numbers, so that files differing in the same way group together."""
    text = re.sub(r"\([A-Za-z]+Error\)|\(stored integers\)", "", text)
    text = re.sub(r"[-+]?(\d+(\.\d*)?(e[-+]?\d+)?|nan|inf)", "#", text)
    return ", ".join(sorted({part.strip() for part in re.split(r"[;,]", text) if part.strip()}))


# ----------------------------------------------------------------------------------------------------------
# Timing on a MESA-sized night


def measure(reader: str, path: Path) -> dict:
    """In a fresh process: peak RSS of one read over the baseline, tracemalloc peak of one read, best time."""
    import tracemalloc

    _repo_paths()
    import edfio  # noqa: F401  imported before the baseline: start-up is not the reader's memory

    import sleepppg.edf  # noqa: F401

    def status_bytes(field: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))

    read = READERS[reader]
    with open("/proc/self/clear_refs", "w") as fh:  # VmHWM := VmRSS (ru_maxrss would keep the parent's peak)
        fh.write("5")
    baseline = status_bytes("VmRSS")
    t0 = time.perf_counter()
    rec = read(path)
    first_s = time.perf_counter() - t0
    peak_rss = status_bytes("VmHWM") - baseline
    samples = {k: int(rec[k].size) for k in ("ppg", "ecg") if rec.get(k) is not None}
    del rec
    tracemalloc.start()
    rec = read(path)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del rec
    times = []
    for _ in range(TIMING_REPEATS):
        t0 = time.perf_counter()
        rec = read(path)
        times.append(time.perf_counter() - t0)
        del rec
    return {"reader": reader, "best_s": min(times), "times_s": times, "first_s": first_s,
            "peak_rss_mb": peak_rss / 1e6, "traced_peak_mb": traced_peak / 1e6, "samples": samples}


def time_readers(root: Path, hours: float) -> tuple[Path, list[dict]]:
    _repo_paths()
    from sleepppg.synthetic.mesa import write_subject

    edf, _ = write_subject(root / "night", "0001", hours, seed=0)
    results = []
    for reader in READERS:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", reader, str(edf)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return Path(edf), results


# ----------------------------------------------------------------------------------------------------------
# Main


def _cell(text: str, width: int = 120) -> str:
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def run_cases(cases: list[dict], worker: Worker) -> None:
    for case in cases:
        for reader in READERS:
            case[reader] = worker.read(reader, case["path"])


def print_hand_table(cases: list[dict]) -> None:
    print("| case | ours | edfio | agreement (max abs diff / range) |")
    print("| --- | --- | --- | --- |")
    for case in cases:
        ok_ours, ours = verdict(case["ours"], case)
        ok_theirs, theirs = verdict(case["edfio"], case)
        case["verdict"] = {"ours": [ok_ours, ours], "edfio": [ok_theirs, theirs]}
        print(f"| {_cell(case['name'], 70)} | {'pass' if ok_ours else 'FAIL'}: {_cell(ours, 60)} | "
              f"{'pass' if ok_theirs else 'FAIL'}: {_cell(theirs)} | {agreement(case['ours'], case['edfio'])[0]} |")
    for reader in READERS:
        failed = sum(not c["verdict"][reader][0] for c in cases)
        print(f"\n{reader}: {len(cases) - failed} of {len(cases)} pass", end="")
    print()


def print_fuzz_table(cases: list[dict]) -> None:
    groups: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for case in cases:
        case["classes"] = fuzz_class(case["ours"], case["edfio"], case)
        groups[case["classes"]].append(case)
    print("| ours | edfio | files | first example (values hypothesis drew) |")
    print("| --- | --- | --- | --- |")
    for (ours, theirs), members in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        print(f"| {ours} | {theirs} | {len(members)} | {_cell(members[0]['name'], 70)} |")
    for i, reader in enumerate(READERS):
        failed = sum(c["classes"][i].startswith("FAIL") for c in cases)
        print(f"\n{reader}: FAIL on {failed} of {len(cases)} files", end="")
    print()
    differ = [c for c in cases if c["classes"][0] == "reads" and c["classes"][1].startswith("reads, differs")]
    if differ:
        print("\nBoth read, values differ:\n")
        for case in differ:
            edfio_notes = case["edfio"]["warnings"] + [f"{ch} uncalibrated" for ch in case["edfio"]["uncalibrated"]]
            print(f"- {case['name']}: {agreement(case['ours'], case['edfio'])[0]}; ours warns "
                  f"{case['ours']['warnings'] or 'nothing'}; edfio: {edfio_notes or 'nothing'}")


def _to_json(cases: list[dict]) -> list[dict]:
    out = []
    for case in cases:
        item = {k: v for k, v in case.items() if k not in ("truth", "path", "ours", "edfio")}
        for reader in READERS:
            item[reader] = {k: v for k, v in case[reader].items() if k not in ("ppg", "ecg")}
        out.append(item)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz-examples", type=int, default=FUZZ_EXAMPLES)
    parser.add_argument("--hours", type=float, default=NIGHT_HOURS, help="length of the timed night (0 skips it)")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_loop()
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return 0
    _repo_paths()
    import edfio

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edf-readers-") as tmp:
        root = Path(tmp)
        worker = Worker(root / "worker.log")
        try:
            hand = hand_cases(root)
            run_cases(hand, worker)
            fuzz = fuzz_cases(root, args.fuzz_examples)
            run_cases(fuzz, worker)
        finally:
            worker.close()
        print(f"edfio {edfio.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}\n")
        print("Hand-made cases (expected answer from tests/test_extract.py):\n")
        print_hand_table(hand)
        print(f"\nFuzzed files: {len(fuzz)} distinct of {args.fuzz_examples} drawn (tests/test_fuzz.py mutated_edf):\n")
        print_fuzz_table(fuzz)
        timing = []
        if args.hours > 0:
            edf, timing = time_readers(root, args.hours)
            size_mb = edf.stat().st_size / 1e6
            print(f"\nOne {args.hours:g}-h night ({size_mb:.0f} MB, make_synthetic_mesa.write_subject), PPG + ECG, "
                  f"each reader in a fresh process:\n")
            print(f"| reader | first read (s) | best of {TIMING_REPEATS} more (s) | peak RSS over baseline (MB) | "
                  "tracemalloc peak (MB) |")
            print("| --- | --- | --- | --- | --- |")
            for r in timing:
                print(f"| {r['reader']} | {r['first_s']:.3f} | {r['best_s']:.3f} | {r['peak_rss_mb']:.0f} | "
                      f"{r['traced_peak_mb']:.0f} |")
        print(f"\n{time.perf_counter() - t_start:.0f} s in all")
        if args.json:
            args.json.write_text(json.dumps({"edfio": edfio.__version__, "hand": _to_json(hand),
                                             "fuzz": _to_json(fuzz), "timing": timing}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
