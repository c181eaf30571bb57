"""EDF+ time keeping: where each data record of an EDF+ (or BDF+) file lies in time, and its signals placed on
that real timeline, with the pauses between records left missing.

EDF+ (Kemp & Olivan 2003) writes "EDF+C" (contiguous records) or "EDF+D" (discontinuous: the recorder paused
between some records) at the start of the header's reserved field. The first "EDF Annotations" signal of
every data record opens with a time-keeping TAL, `+onset\\x14\\x14\\x00`: the record's start, in seconds after
the start time in the header. A plain EDF, and an EDF+C, is one continuous stretch from its first sample.

Rules (`record_timeline`):
- EDF+D: every record must carry its time-keeping onset ('edf_no_timekeeping' otherwise), and each record must
  start where or after the previous one ends (within ONSET_TOLERANCE_S): a record that starts before the one
  before it is 'edf_records_out_of_order', one that starts inside it 'edf_records_overlap'. Parts are never
  spliced together: time 0 is the header's start time (as the stages of an NSRR XML count it), each record's
  samples start at its onset, rounded to the nearest sample (at most half a sample off: 2 ms at 256 Hz), and
  the samples between parts (and before a first record that starts late) are NaN. A timeline longer than
  grid.MAX_SPAN_H (48 h) is not one night: 'edf_span_too_long'. Any shorter pause is a gap: up to max_gap_s
  (30 s) it is bridged as every reader bridges missing data (`bridge_pauses`), longer it stays a gap whose
  epochs are not staged (inference) and carry no label (extraction); a later part beyond the model's 10-h span
  is cut off with the usual truncation warning.
- EDF+C: when every record carries an onset, the onsets must follow each other by one record duration
  ('edf_not_contiguous' otherwise: the header and the records disagree); without annotations it is read as a
  plain EDF.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from sleepppg.errors import BadRecordingError
from sleepppg.grid import MAX_SPAN_H, regular_signal

ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")  # the time-keeping signal's label (EDF+, BDF+)
ONSET_TOLERANCE_S = 1e-3  # s: record onsets within 1 ms of the previous record's end are contiguous
TIMEKEEPING_RE = re.compile(rb"([+-]\d+(?:\.\d*)?)(?:\x15[^\x14]*)?\x14\x14")  # +onset[\x15duration]\x14\x14


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Where the data records lie: `parts` = (first record, number of records, start s from the header's start
    time) of each contiguous stretch; `gaps` = [start_s, duration_s] of every pause (before the first part
    too, when it starts late)."""

    parts: tuple[tuple[int, int, float], ...]
    gaps: tuple[tuple[float, float], ...]
    record_s: float

    @property
    def duration_s(self) -> float:
        first, count, start = self.parts[-1]
        return start + count * self.record_s

    def place(self, x: np.ndarray, samples_per_record: int, fs: float) -> np.ndarray:
        """A signal read record after record (`samples_per_record` each) -> float64 on the timeline at `fs` Hz:
        each part from the sample nearest its start, NaN between parts."""
        if not self.gaps:
            return x
        starts = []
        end = 0
        for first, count, start_s in self.parts:
            k = max(end, round(start_s * fs))  # a pause shorter than half a sample does not move the part
            starts.append(k)
            end = k + count * samples_per_record
        out = np.full(end, np.nan)
        for k, (first, count, _) in zip(starts, self.parts):
            out[k:k + count * samples_per_record] = x[first * samples_per_record:(first + count) * samples_per_record]
        return out


def edf_plus_kind(reserved: str) -> str:
    """'C' (EDF+C/BDF+C), 'D' (EDF+D/BDF+D) or '' (plain EDF/BDF) from the header's reserved field."""
    for kind in ("C", "D"):
        if reserved.startswith((f"EDF+{kind}", f"BDF+{kind}")):
            return kind
    return ""


def annotation_bytes(digital: np.ndarray, samples_per_record: int, bytes_per_sample: int) -> list[bytes]:
    """The annotation signal's stored integers (int16 EDF, int32 BDF) back to its bytes, one string per record."""
    if bytes_per_sample == 2:
        raw = digital.astype("<i2").tobytes()
    else:
        raw = (digital.astype(np.int64) & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    step = samples_per_record * bytes_per_sample
    return [raw[i:i + step] for i in range(0, len(raw), step)]


def record_onsets(records: list[bytes]) -> np.ndarray:
    """Each record's time-keeping onset (s after the header's start time), NaN where its first TAL is not one."""
    onsets = np.full(len(records), np.nan)
    for r, text in enumerate(records):
        match = TIMEKEEPING_RE.match(text)
        if match:
            onsets[r] = float(match.group(1))
    return onsets


def record_timeline(kind: str, onsets: np.ndarray | None, record_s: float, n_records: int,
                    name: str) -> Timeline:
    """The data records' timeline of an EDF (+C/+D) file with the rules of the module docstring.

    Args:
        kind: `edf_plus_kind`; onsets: `record_onsets` of the first annotation signal, None without one.
    Raises:
        BadRecordingError: 'edf_no_timekeeping', 'edf_records_out_of_order', 'edf_records_overlap',
            'edf_span_too_long', 'edf_not_contiguous'.
    """
    whole = Timeline(((0, n_records, 0.0),), (), record_s)
    if kind == "C" and onsets is not None and np.isfinite(onsets).all():
        drift = onsets - onsets[0] - record_s * np.arange(n_records)
        bad = np.flatnonzero(np.abs(drift) > ONSET_TOLERANCE_S)
        if bad.size:
            r = int(bad[0])
            raise BadRecordingError(
                f"EDF+C {name} is marked contiguous, but data record {r + 1} starts at {onsets[r]:g} s, not "
                f"{onsets[0] + r * record_s:g} s (record duration {record_s:g} s): the records are not one "
                "continuous stretch", kind="edf_not_contiguous")
    if kind != "D":
        return whole
    if onsets is None:
        raise BadRecordingError(f"EDF+D {name} (discontinuous) has no 'EDF Annotations' signal, so where its "
                                "data records lie in time is unknown", kind="edf_no_timekeeping")
    missing = np.flatnonzero(~np.isfinite(onsets))
    if missing.size:
        raise BadRecordingError(f"EDF+D {name} (discontinuous): data record {int(missing[0]) + 1} does not start "
                                "with a time-keeping annotation (+onset), so where it lies in time is unknown",
                                kind="edf_no_timekeeping")
    if onsets[0] < -ONSET_TOLERANCE_S:
        raise BadRecordingError(f"EDF+D {name}: data record 1 starts at {onsets[0]:g} s, before the start time "
                                "in the header", kind="edf_records_out_of_order")
    pause = onsets[1:] - (onsets[:-1] + record_s)  # s between a record's end and the next one's start
    back = np.flatnonzero(onsets[1:] < onsets[:-1])
    if back.size:
        r = int(back[0]) + 1
        raise BadRecordingError(f"EDF+D {name}: data record {r + 1} starts at {onsets[r]:g} s, before record {r} "
                                f"({onsets[r - 1]:g} s): the records are out of order",
                                kind="edf_records_out_of_order")
    overlap = np.flatnonzero(pause < -ONSET_TOLERANCE_S)
    if overlap.size:
        r = int(overlap[0]) + 1
        raise BadRecordingError(f"EDF+D {name}: data record {r + 1} starts at {onsets[r]:g} s, inside record {r} "
                                f"({onsets[r - 1]:g} to {onsets[r - 1] + record_s:g} s): the records overlap",
                                kind="edf_records_overlap")
    end_s = float(onsets[-1]) + record_s
    if end_s > MAX_SPAN_H * 3600:
        raise BadRecordingError(f"EDF+D {name}: its data records span {end_s / 3600:.3g} h from the start time; "
                                f"more than {MAX_SPAN_H:g} h is not one night", kind="edf_span_too_long")
    breaks = np.flatnonzero(pause > ONSET_TOLERANCE_S) + 1  # first record of each later part
    firsts = [0] + breaks.tolist()
    counts = np.diff(firsts + [n_records]).tolist()
    parts = tuple((f, c, float(onsets[f])) for f, c in zip(firsts, counts))
    gaps = [(float(onsets[r - 1]) + record_s, float(pause[r - 1])) for r in breaks]
    if onsets[0] > ONSET_TOLERANCE_S:
        gaps.insert(0, (0.0, float(onsets[0])))
    return Timeline(parts, tuple((round(s, 6), round(d, 6)) for s, d in gaps), record_s)


def bridge_pauses(rec: dict, max_gap_s: float) -> tuple[np.ndarray, np.ndarray | None, list[list[float]], list[str]]:
    """The PPG (and ECG) of `sleepppg.edf.read_edf` with the pauses of an EDF+D handled as every reader handles
    missing data (grid.regular_signal): bridged by interpolation up to `max_gap_s`, NaN beyond.

    Returns:
        (ppg, ecg or None, gaps [start_s, duration_s] longer than max_gap_s, warnings saying what was done).
    """
    ppg, ecg, pauses = rec["ppg"], rec["ecg"], rec.get("gaps") or []
    if not pauses:
        return ppg, ecg, [], []
    ppg, gaps = regular_signal(ppg, rec["ppg_fs"], max_gap_s)
    if ecg is not None:
        ecg, _ = regular_signal(ecg, rec["ecg_fs"], max_gap_s)
    n_bridged = len(pauses) - len(gaps)
    text = (f"EDF+D: {len(pauses)} pause(s) between data records ({sum(d for _, d in pauses) / 60:.1f} min in all)"
            f"; {len(gaps)} longer than {max_gap_s:g} s left as gaps (not staged, no label)")
    if n_bridged:
        text += f", {n_bridged} shorter bridged by interpolation"
    return ppg, ecg, [list(g) for g in gaps], [text]

