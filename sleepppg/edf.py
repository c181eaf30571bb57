"""Our EDF/EDF+/BDF reader: one open and one pass per file, the header checked against the file size.

It reads only the channels asked for, in 8-MB blocks, and every absurd header field (no signals, a record
duration of 0, NaN or a negative number, a header size that disagrees with the signal count, a channel with no
scale or no samples) becomes a `BadRecordingError` naming the file, never an assertion, a division by zero or
bytes read as signal.

Why our own reader rather than edfio (already a dependency): measured with bench/edf_readers.py on 2026-12-04,
edfio 0.4.18 agrees with it to 2e-16 of the range on valid EDF, BDF and EDF+C files and is 1.2-1.45x faster on a
10.5-h night (PPG + ECG), but peaks 1.66x higher in memory (339 against 204 MB) and fails 17 of the 41 hand-made
files (those of tests/test_extract.py and an EDF+D) that this reader passes: an EDF+D returned in file order (its
30-s pause dropped, the later records early, silently), ZeroDivisionError (no signals), UnboundLocalError (record
duration 0), IndexError (999 signals; a file cut inside the header), or wrong values with at most a warning
(sampling rates of -256 Hz, NaN or 2.6e302 Hz; stored integers returned uncalibrated when a scale field is equal
to its pair or does not parse; NaN values; data read at a wrong offset when the header size disagrees; trailing
bytes read as one more record; an ECG without a scale returned, not dropped). Of 261 fuzzed files
(tests/test_fuzz.py) it fails 23, this reader none. Details: docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sleepppg.channels import PPG_PATTERNS, _log_ppg_choice, find_ecg_channel, find_ppg_channel
from sleepppg.edfplus import (
    ANNOTATION_LABELS,
    annotation_bytes,
    edf_plus_kind,
    record_onsets,
    record_timeline,
)
from sleepppg.errors import BadRecordingError

# EDF/BDF files (layout in the "EDF reading" section below)
EDF_FIXED_HEADER_BYTES = 256
EDF_SIGNAL_HEADER_BYTES = 256  # per signal: the widths below add up to 256
EDF_SIGNAL_FIELDS = (("label", 16), ("transducer", 80), ("physical_dimension", 8), ("physical_min", 8),
                     ("physical_max", 8), ("digital_min", 8), ("digital_max", 8), ("prefiltering", 80),
                     ("samples_per_record", 8), ("reserved", 32))
VOLTS_PER_UNIT = {"uV": 1e-6, "\u00b5V": 1e-6, "\u03bcV": 1e-6, "mV": 1e-3}  # voltage channels in volts, as mne
MAX_SAMPLING_RATE_HZ = 100_000.0  # far above any PSG channel: a higher rate means a broken header
# The fastest signal of a recording below this (one sample per 100 s) means a record duration far too long
MIN_TOP_SAMPLING_RATE_HZ = 0.01
READ_BLOCK_BYTES = 8 * 2**20  # data records are read in blocks of about 8 MB (memory stays ~1 channel per night)
SATURATION_WARN_FRACTION = 0.05  # warn when more of the PPG than this sits at its digital limits


# ----------------------------------------------------------------------------------------------------------
# EDF reading: our own parser of the EDF/BDF header and data records (one open and one pass per file)
#
# Layout (EDF: Kemp et al. 1992; BDF: BioSemi's 24-bit variant): a 256-byte fixed header of ASCII fields, then
# 256 bytes per signal stored field by field (all labels, then all transducers, ...), then the data records.
# Each record holds, signal after signal, `samples_per_record` little-endian two's-complement integers
# (16-bit in EDF, 24-bit in BDF). Physical value = physical_min + (digital - digital_min) x
# (physical_max - physical_min) / (digital_max - digital_min), in the signal's physical dimension.


@dataclasses.dataclass(frozen=True)
class EdfSignal:
    """One signal's header fields. Numbers that do not parse are NaN; `check_readable` says why the signal
    cannot be read."""

    index: int  # position among the signals (0-based)
    label: str  # whitespace and NUL padding removed
    physical_dimension: str  # e.g. 'uV', 'mV', '%', ''
    physical_min: float
    physical_max: float
    digital_min: float
    digital_max: float
    samples_per_record: int
    fs: float  # samples_per_record / record duration, Hz

    def check_readable(self) -> str | None:
        """A reason this signal's samples cannot be turned into physical values, or None."""
        name = f"channel {self.label!r} (signal {self.index + 1})"
        values = {"physical min": self.physical_min, "physical max": self.physical_max,
                  "digital min": self.digital_min, "digital max": self.digital_max}
        for what, value in values.items():
            if not math.isfinite(value):
                return f"{name}: {what} is not a number"
        if self.samples_per_record <= 0:
            return f"{name}: {self.samples_per_record} samples per record"
        if not 0 < self.fs <= MAX_SAMPLING_RATE_HZ:
            return f"{name}: sampling rate {self.fs:g} Hz is outside (0, {MAX_SAMPLING_RATE_HZ:g}]"
        if self.digital_min == self.digital_max:
            return f"{name}: digital min = digital max = {self.digital_min:g} (no scale)"
        if self.physical_min == self.physical_max:
            return f"{name}: physical min = physical max = {self.physical_min:g} (no scale)"
        return None


@dataclasses.dataclass(frozen=True)
class EdfHeader:
    """What `read_edf_header` found: the layout of the data records and every signal's fields."""

    path: Path
    bytes_per_sample: int  # 2 (EDF) or 3 (BDF)
    header_bytes: int  # 256 x (number of signals + 1)
    n_records: int  # complete data records to read: the declared count, or what the file holds if unknown
    record_s: float  # duration of one data record, s
    signals: tuple[EdfSignal, ...]
    warnings: tuple[str, ...]  # disagreements that were resolved (record count, trailing bytes, labels)
    edf_plus: str = ""  # 'C' (EDF+C), 'D' (EDF+D: records with pauses between them) or '' (plain EDF/BDF)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.signals]

    @property
    def record_samples(self) -> int:
        return sum(s.samples_per_record for s in self.signals)


def _text(raw: bytes) -> str:
    return raw.decode("latin-1").replace("\x00", " ").strip()


def _header_int(raw: bytes, what: str, name: str) -> int:
    try:
        return int(_text(raw))
    except ValueError:
        raise BadRecordingError(f"bad EDF header in {name}: {what} {_text(raw)!r} is not an integer",
                                kind="bad_edf_header") from None


def _header_float(raw: bytes) -> float:
    try:
        return float(_text(raw))
    except ValueError:
        return math.nan


def read_edf_header(fh: BinaryIO, path: Path, file_size: int) -> EdfHeader:
    """Parse the header of an open EDF/BDF file (positioned at its start) and check it against the file size.

    The record count used is the declared one when the file holds at least that many records (bytes after
    them are ignored, with a warning), or, when the header says -1 (unknown), the complete records the file
    holds (a partial last record is ignored, with a warning).

    Raises:
        BadRecordingError: kind 'unreadable_edf' (not an EDF/BDF file), 'truncated_edf' (shorter than its
            header or its declared records) or 'bad_edf_header' (a field that is absent, not a number or
            absurd: no signals, a record duration that is not a positive finite number, a header size that
            disagrees with the number of signals, records without samples, a record duration that puts the
            fastest signal's rate outside MIN_TOP_SAMPLING_RATE_HZ..MAX_SAMPLING_RATE_HZ).
    """
    name = path.name
    head = fh.read(EDF_FIXED_HEADER_BYTES)
    if len(head) < EDF_FIXED_HEADER_BYTES:
        raise BadRecordingError(f"truncated EDF {name}: {len(head)} bytes, shorter than the 256-byte header",
                                kind="truncated_edf")
    if head[:1] == b"0":
        bytes_per_sample = 2
    elif head[:8] == b"\xffBIOSEMI":
        bytes_per_sample = 3
    else:
        raise BadRecordingError(f"unreadable EDF {name}: not an EDF or BDF file (version field {head[:8]!r})",
                                kind="unreadable_edf")

    def bad(message: str) -> BadRecordingError:
        return BadRecordingError(f"bad EDF header in {name}: {message}", kind="bad_edf_header")

    n_signals = _header_int(head[252:256], "number of signals", name)
    if n_signals < 1:
        raise bad(f"{n_signals} signals")
    header_bytes = EDF_FIXED_HEADER_BYTES + n_signals * EDF_SIGNAL_HEADER_BYTES
    declared_header_bytes = _header_int(head[184:192], "header size", name)
    if declared_header_bytes != header_bytes:
        raise bad(f"header size field says {declared_header_bytes} bytes, but {n_signals} signals "
                  f"need 256 x {n_signals + 1} = {header_bytes}")
    if file_size < header_bytes:
        raise BadRecordingError(f"truncated EDF {name}: {file_size} bytes, shorter than its "
                                f"{header_bytes}-byte header", kind="truncated_edf")
    record_s = _header_float(head[244:252])
    if not (math.isfinite(record_s) and record_s > 0):
        raise bad(f"record duration {_text(head[244:252])!r} s is not a positive number")
    declared_records = _header_int(head[236:244], "number of data records", name)

    columns = fh.read(header_bytes - EDF_FIXED_HEADER_BYTES)
    fields, offset = {}, 0
    for field, width in EDF_SIGNAL_FIELDS:
        fields[field] = [columns[offset + i * width: offset + (i + 1) * width] for i in range(n_signals)]
        offset += width * n_signals
    per_record = [_header_int(raw, f"samples per record of signal {i + 1}", name)
                  for i, raw in enumerate(fields["samples_per_record"])]
    if any(n < 0 for n in per_record) or sum(per_record) == 0:
        raise bad(f"samples per record {per_record}")
    signals = tuple(EdfSignal(
        index=i, label=_text(fields["label"][i]), physical_dimension=_text(fields["physical_dimension"][i]),
        physical_min=_header_float(fields["physical_min"][i]), physical_max=_header_float(fields["physical_max"][i]),
        digital_min=_header_float(fields["digital_min"][i]), digital_max=_header_float(fields["digital_max"][i]),
        samples_per_record=per_record[i], fs=per_record[i] / record_s) for i in range(n_signals))
    top_fs = max(per_record) / record_s
    if not MIN_TOP_SAMPLING_RATE_HZ <= top_fs <= MAX_SAMPLING_RATE_HZ:
        raise bad(f"record duration {record_s:g} s makes the fastest signal's rate {top_fs:g} Hz "
                  f"({max(per_record)} samples per record), outside {MIN_TOP_SAMPLING_RATE_HZ:g}.."
                  f"{MAX_SAMPLING_RATE_HZ:g} Hz")

    warnings = []
    record_bytes = sum(per_record) * bytes_per_sample
    held, extra_bytes = divmod(file_size - header_bytes, record_bytes)
    if declared_records >= 0:
        if held < declared_records:
            raise BadRecordingError(f"truncated EDF {name}: {file_size} bytes hold {held} complete data records, "
                                    f"the header declares {declared_records}", kind="truncated_edf")
        n_records = declared_records
        ignored = file_size - header_bytes - n_records * record_bytes
        if ignored:
            warnings.append(f"{ignored} bytes after the {n_records} declared data records are ignored")
    else:
        n_records = held
        warnings.append(f"the header gives the number of data records as {declared_records} (unknown): "
                        f"reading the {held} complete records the file holds"
                        + (f", ignoring {extra_bytes} bytes of a partial record" if extra_bytes else ""))
    if n_records == 0:
        raise bad("no data records")
    seen: dict[str, int] = {}
    for s in signals:
        key = s.label.lower()
        if key in seen:
            warnings.append(f"channels {seen[key] + 1} and {s.index + 1} are both labelled {s.label!r} "
                            "(ignoring case and padding); a search by name takes the first")
        else:
            seen[key] = s.index
    return EdfHeader(path, bytes_per_sample, header_bytes, n_records, record_s, signals, tuple(warnings),
                     edf_plus_kind(_text(head[192:236])))


def _read_digital(fh: BinaryIO, header: EdfHeader, indices: list[int]) -> list[np.ndarray]:
    """The stored integers of the signals at `indices`, in one pass over the data records (blocks of whole
    records, about READ_BLOCK_BYTES at a time). int16 for EDF, int32 for BDF."""
    per_record = [s.samples_per_record for s in header.signals]
    starts = np.concatenate([[0], np.cumsum(per_record)])
    total = int(starts[-1])
    record_bytes = total * header.bytes_per_sample
    dtype = np.int16 if header.bytes_per_sample == 2 else np.int32
    out = [np.empty(header.n_records * per_record[i], dtype=dtype) for i in indices]
    block = max(1, READ_BLOCK_BYTES // record_bytes)
    fh.seek(header.header_bytes)
    for first in range(0, header.n_records, block):
        n = min(block, header.n_records - first)
        raw = fh.read(n * record_bytes)
        if len(raw) < n * record_bytes:  # the file shrank while we read it
            raise BadRecordingError(f"truncated EDF {header.path.name}: data ended inside record "
                                    f"{first + len(raw) // record_bytes + 1}", kind="truncated_edf")
        if header.bytes_per_sample == 2:
            records = np.frombuffer(raw, dtype="<i2").reshape(n, total)
        else:  # 24-bit little-endian two's complement
            b = np.frombuffer(raw, dtype=np.uint8).reshape(n, total, 3).astype(np.int32)
            records = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
            records -= (records & 0x800000) << 1
        for dest, i in zip(out, indices):
            spr = per_record[i]
            dest[first * spr:(first + n) * spr] = records[:, starts[i]:starts[i] + spr].reshape(-1)
    return out


def to_physical(digital: np.ndarray, signal: EdfSignal) -> np.ndarray:
    """Stored integers -> physical values (float64) as the EDF specification defines them,
    physical_min + (digital - digital_min) x (physical_max - physical_min) / (digital_max - digital_min),
    then volts for channels in uV or mV (as mne returns them; other units are kept)."""
    gain = (signal.physical_max - signal.physical_min) / (signal.digital_max - signal.digital_min)
    x = digital.astype(np.float64)
    x -= signal.digital_min
    x *= gain
    x += signal.physical_min
    x *= VOLTS_PER_UNIT.get(signal.physical_dimension, 1.0)
    return x


def saturated_fraction(digital: np.ndarray, signal: EdfSignal, bytes_per_sample: int) -> float:
    """Share of samples at the signal's digital min or max, or at the format's lowest integer (-32,768 in
    EDF), which recorders use as a dropout marker."""
    lowest = -(2 ** (8 * bytes_per_sample - 1))
    lo, hi = min(signal.digital_min, signal.digital_max), max(signal.digital_min, signal.digital_max)
    if digital.size == 0:
        return 0.0
    return float(np.count_nonzero((digital <= lo) | (digital >= hi) | (digital == lowest)) / digital.size)


def read_edf(edf_path: str | os.PathLike, ppg_patterns: tuple[str, ...] | list[str] = PPG_PATTERNS,
             with_ecg: bool = True, ppg_label: str | None = None) -> dict:
    """Read the PPG and (if present and `with_ecg`) ECG channels of one EDF/BDF, each at its native rate:
    one open, one header parse, one pass over the data records. The PPG channel is the label `ppg_label`
    exactly when given, else the one `find_ppg_channel` picks with `ppg_patterns`.

    An EDF+D (records with pauses between them) comes back on its real timeline (sleepppg.edfplus): from the
    header's start time, each record at its time-keeping onset, NaN in the pauses, which `gaps` lists.

    Returns:
        dict(ppg=float64 1-D, ppg_fs=Hz, ppg_channel=label, ecg=float64 1-D or None, ecg_fs=Hz or None,
        ecg_channel=label or None, duration_s=PPG duration in s (pauses included), gaps=[start_s, duration_s]
        of the pauses of an EDF+D (empty otherwise), warnings=list of str). Values are physical, in volts for
        uV/mV channels (as mne gives them), else in the channel's own unit. An ECG that cannot be read is
        dropped with a warning.
    Raises:
        BadRecordingError: kind 'missing_edf', 'unreadable_edf' (not an EDF, no read permission, I/O error),
            'truncated_edf', 'bad_edf_header' (see `read_edf_header`; the PPG channel's own scale or rate
            included), 'no_ppg_channel', or one of sleepppg.edfplus.record_timeline (EDF+ records whose
            time keeping is missing, out of order, overlapping, or disagrees with EDF+C).
    """
    edf_path = Path(edf_path)
    try:
        with open(edf_path, "rb") as fh:
            header = read_edf_header(fh, edf_path, os.fstat(fh.fileno()).st_size)
            warnings = list(header.warnings)
            rates = [s.fs for s in header.signals]
            if ppg_label is not None:
                ppg_channel = ppg_label if ppg_label in header.labels else None
                ppg_patterns = [ppg_label]  # for the message below
            else:
                ppg_channel = find_ppg_channel(header.labels, rates, ppg_patterns)
            if ppg_channel is None:
                raise BadRecordingError(f"no PPG channel (labels containing {list(ppg_patterns)}) in "
                                        f"{edf_path.name}; channels: {header.labels}", kind="no_ppg_channel")
            _log_ppg_choice(edf_path, ppg_channel, header.labels, rates, ppg_patterns)
            ppg_signal = header.signals[header.labels.index(ppg_channel)]
            problem = ppg_signal.check_readable()
            if problem:
                raise BadRecordingError(f"bad EDF header in {edf_path.name}: PPG {problem}", kind="bad_edf_header")
            ecg_channel = find_ecg_channel(header.labels) if with_ecg else None
            ecg_signal = header.signals[header.labels.index(ecg_channel)] if ecg_channel is not None else None
            if ecg_signal is not None and ecg_signal.check_readable():
                warnings.append(f"ECG not used: {ecg_signal.check_readable()}")
                ecg_signal = None
            wanted = [ppg_signal] + ([ecg_signal] if ecg_signal is not None else [])
            annotations = next((s for s in header.signals if header.edf_plus and s.label in ANNOTATION_LABELS
                                and s.samples_per_record > 0), None)  # EDF+ time keeping: the first one
            digital = _read_digital(fh, header, [s.index for s in wanted]
                                    + ([annotations.index] if annotations is not None else []))
    except FileNotFoundError:
        raise BadRecordingError(f"EDF not found: {edf_path}", kind="missing_edf") from None
    except PermissionError:
        raise BadRecordingError(f"unreadable EDF {edf_path}: no permission to read it",
                                kind="unreadable_edf") from None
    except OSError as err:
        raise BadRecordingError(f"unreadable EDF {edf_path}: {err.strerror or err}", kind="unreadable_edf") from None
    onsets = None if annotations is None else record_onsets(
        annotation_bytes(digital[-1], annotations.samples_per_record, header.bytes_per_sample))
    timeline = record_timeline(header.edf_plus, onsets, header.record_s, header.n_records, edf_path.name)
    saturated = saturated_fraction(digital[0], ppg_signal, header.bytes_per_sample)
    if saturated > SATURATION_WARN_FRACTION:
        warnings.append(f"PPG {ppg_signal.label!r} sits at its digital limits (saturated, or dropout markers) "
                        f"for {saturated:.0%} of the recording")
    ppg = timeline.place(to_physical(digital[0], ppg_signal), ppg_signal.samples_per_record, ppg_signal.fs)
    ecg = None if ecg_signal is None else timeline.place(to_physical(digital[1], ecg_signal),
                                                         ecg_signal.samples_per_record, ecg_signal.fs)
    return {"ppg": ppg, "ppg_fs": ppg_signal.fs, "ppg_channel": ppg_signal.label,
            "ecg": ecg, "ecg_fs": ecg_signal.fs if ecg_signal is not None else None,
            "ecg_channel": ecg_signal.label if ecg_signal is not None else None,
            "duration_s": timeline.duration_s, "gaps": [list(g) for g in timeline.gaps], "warnings": warnings}
