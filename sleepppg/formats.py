"""Read a PPG recording of any supported format onto a uniform time grid (`read_recording`) and preprocess it
as MESA's (`preprocess_file`): tables (.csv, .tsv, .txt: sleepppg.tables), NumPy arrays (.npy), NumPy archives
and MATLAB files (.npz, .mat: sleepppg.arrays), WFDB records (.hea + .dat/.mat) and EDF/BDF (through
sleepppg.edf). A .mat beside a .hea of the same name is that WFDB record's data; a NumPy or MATLAB file named
like another format is read by its content, with a warning. Missing data and rates: sleepppg.grid; DREAMT
wearable CSVs with sleep stages: sleepppg.dreamt. Preprocessing (filters, resampling to 34.133 Hz, windows) is
preprocess_signals, the same as for MESA.

Rates: a file that states its rate (time stamps, a WFDB or EDF header, a stored `Fs`) is read at that rate; the
given `fs` (--fs) applies only to files that state none (a table without time stamps, a .npy, a .npz/.mat
without a rate), and where it differs from a stated rate by more than 0.1% the night gets one warning naming
both. Every Recording's info counts `filled_samples`: grid samples interpolated across missing data.

Usage (as a library): rec = read_recording(Path("night.csv"), fs=None, column=None, patterns=("pleth",
"ppg", "bvp"), max_gap_s=30.0)
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from sleepppg.arrays import FORMAT_NAMES, content_format, read_arrays
from sleepppg.channels import PPG_PATTERNS, find_ppg_channel
from sleepppg.constants import WINDOWS_PER_SUBJECT
from sleepppg.edf import read_edf, read_edf_header
from sleepppg.edfplus import bridge_pauses
from sleepppg.errors import BadRecordingError
from sleepppg.grid import (
    MAX_GAP_S,
    RATE_SNAP_TOLERANCE,
    Recording,
    check_rate,
    integer_rails,
    mark_missing,
    regular_signal,
)
from sleepppg.preprocessing import preprocess_signals
from sleepppg.tables import read_table

log = logging.getLogger("sleepppg.formats")

# ----------------------------------------------------------------------------------------------------------
# Constants

FORMAT_BY_SUFFIX = {".csv": "table", ".tsv": "table", ".txt": "table", ".npy": "npy", ".npz": "npz",
                    ".mat": "mat", ".hea": "wfdb", ".edf": "edf", ".bdf": "edf"}
WFDB_DATA_SUFFIXES = (".dat", ".mat")  # beside a .hea of the same name: part of that record, not one of its own


# ----------------------------------------------------------------------------------------------------------
# NumPy, MATLAB, WFDB, EDF


def regular_recording(x: np.ndarray, fs: float, max_gap_s: float, info: dict) -> Recording:
    """A signal sampled at `fs` Hz (NaN = missing) -> Recording: stretches up to `max_gap_s` interpolated (and
    counted in `filled_samples`), longer ones left as gaps."""
    signal, gaps = regular_signal(x, fs, max_gap_s)
    n_filled = int(np.count_nonzero(np.isnan(x) & ~np.isnan(signal)))
    return Recording(signal, float(fs), {"column": None, "time_column": None, "duplicated_stamps": 0,
                                         "start_time": None, "fs_source": None, "warnings": [], **info,
                                         "fs_found": float(fs), "gaps": gaps, "filled_samples": n_filled})


def read_npy(path: Path, fs: float | None, max_gap_s: float = MAX_GAP_S) -> Recording:
    """A .npy array of one signal (1-D, or 2-D with one row or column) at `fs` Hz -> Recording.
    Integer arrays: samples at the dtype's limits are saturated (missing)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:
        raise BadRecordingError(f"{path.name}: not a readable .npy file: {err}", kind="unreadable_npy") from None
    if arr.size == 0:
        raise BadRecordingError(f"{path.name}: empty array", kind="empty_file")
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.number) and not np.iscomplexobj(arr)):
        raise BadRecordingError(f"{path.name}: expected one real signal (a 1-D array), got {arr.dtype} "
                                f"{arr.shape}", kind="unreadable_npy")
    if fs is None:
        raise BadRecordingError(f"{path.name}: a .npy file does not store its sampling rate; pass --fs",
                                kind="needs_fs")
    check_rate(fs, path)
    ppg = mark_missing(np.asarray(arr), integer_rails(np.asarray(arr), arr.dtype))
    return regular_recording(ppg, fs, max_gap_s, {"source_format": "npy"})


def read_named_arrays(path: Path, kind: str, fs: float | None, column: str | None = None,
                      patterns: Sequence[str] = PPG_PATTERNS, max_gap_s: float = MAX_GAP_S) -> Recording:
    """A .npz or .mat file (`kind` 'npz' or 'mat'; see sleepppg.arrays) -> Recording at its stored rate, else
    at `fs`. Integer arrays: samples at the dtype's limits are saturated (missing)."""
    name, arr, key, stored_fs = read_arrays(path, kind, column, patterns)
    if stored_fs is None and fs is None:
        raise BadRecordingError(f"{path.name}: no sampling rate stored (no key like 'fs' or 'Fs'); pass --fs",
                                kind="needs_fs")
    rate = stored_fs if stored_fs is not None else float(fs)
    check_rate(rate, path)
    ppg = mark_missing(arr, integer_rails(np.asarray(arr, dtype=np.float64), arr.dtype))
    return regular_recording(ppg, rate, max_gap_s, {"source_format": kind, "column": name,
                                                    "fs_source": None if key is None else f"key {key!r}"})


def _pick_signal(names: list[str], rates: list[float], column: str | None, patterns: Sequence[str], path: Path,
                 what: str) -> str:
    """The signal named `column` (exact, any case), else the highest-rate one matching the PPG patterns."""
    if column:
        match = [n for n in names if n.lower() == column.lower()]
        if not match:
            raise BadRecordingError(f"{path.name}: no {what} named {column!r}; signals: {names}",
                                    kind="no_ppg_channel")
        return match[0]
    name = find_ppg_channel(names, rates, patterns)
    if name is None:
        raise BadRecordingError(f"{path.name}: no PPG signal (names containing {list(patterns)}); signals: "
                                f"{names}; pass --column", kind="no_ppg_channel")
    return name


def read_wfdb(path: Path, column: str | None = None, patterns: Sequence[str] = PPG_PATTERNS,
              max_gap_s: float = MAX_GAP_S) -> Recording:
    """A WFDB record (its .hea; samples in .dat or .mat beside it) -> Recording, read with the `wfdb`
    package. The rate is the header's (times samples per frame for the chosen signal); samples WFDB marks
    invalid are missing."""
    import wfdb

    record_name = str(path.with_suffix(""))
    try:
        header = wfdb.rdheader(record_name)
    except (ValueError, OSError, IndexError, TypeError) as err:
        raise BadRecordingError(f"{path.name}: unreadable WFDB header: {err}", kind="unreadable_wfdb") from None
    if getattr(header, "seg_name", None):
        raise BadRecordingError(f"{path.name}: multi-segment WFDB records are not supported",
                                kind="unreadable_wfdb")
    names = list(header.sig_name or [])
    rates = [float(header.fs) * int(spf or 1) for spf in (header.samps_per_frame or [1] * len(names))]
    name = _pick_signal(names, rates, column, patterns, path, "signal")
    channel = names.index(name)
    data_file = path.parent / header.file_name[channel]
    if not data_file.is_file():
        raise BadRecordingError(f"{path.name}: its data file {data_file.name} is missing", kind="missing_data_file")
    try:
        rec = wfdb.rdrecord(record_name, channels=[channel], smooth_frames=False)
    except (ValueError, OSError, IndexError, TypeError, EOFError) as err:
        raise BadRecordingError(f"{path.name}: unreadable WFDB record: {err}", kind="unreadable_wfdb") from None
    signal = np.asarray(rec.e_p_signal[0], dtype=np.float64)
    fs = float(rec.fs) * int(rec.samps_per_frame[0])
    check_rate(fs, path)
    if signal.size == 0:
        raise BadRecordingError(f"{path.name}: no samples", kind="empty_file")
    return regular_recording(mark_missing(signal, None), fs, max_gap_s,
                             {"source_format": "wfdb", "column": name, "fs_source": "the WFDB header"})


def read_edf_ppg(path: Path, column: str | None = None, patterns: Sequence[str] = PPG_PATTERNS,
                 max_gap_s: float = MAX_GAP_S) -> Recording:
    """The PPG channel of an EDF/BDF through read_edf (the MESA reader): `column` is an
    exact label (any case), else the configured patterns. The pauses of an EDF+D are missing data
    (sleepppg.edfplus.bridge_pauses: bridged up to `max_gap_s`, gaps beyond)."""

    label = None
    if column:  # the header alone, with the same parser as read_edf (BadRecordingError when it is broken)
        try:
            with open(path, "rb") as fh:
                header = read_edf_header(fh, path, os.fstat(fh.fileno()).st_size)
        except OSError as err:
            raise BadRecordingError(f"unreadable EDF {path.name}: {err}", kind="unreadable_edf") from None
        label = _pick_signal(header.labels, [s.fs for s in header.signals], column, patterns, path, "channel")
    rec = read_edf(path, patterns, with_ecg=False, ppg_label=label)
    ppg, _, gaps, pause_warnings = bridge_pauses(rec, max_gap_s)  # warnings: the night's entry (and its log)
    return Recording(ppg, float(rec["ppg_fs"]),
                     {"source_format": "edf", "column": rec["ppg_channel"], "fs_found": float(rec["ppg_fs"]),
                      "time_column": None, "duplicated_stamps": 0, "start_time": None, "gaps": gaps,
                      "fs_source": "the EDF header", "warnings": list(pause_warnings), "filled_samples": 0})


def _is_wfdb_data(path: Path) -> bool:
    """A .dat, or a .mat beside a .hea of the same name: the samples of a WFDB record."""
    suffix = path.suffix.lower()
    return suffix == ".dat" or (suffix == ".mat" and any(path.with_suffix(s).is_file() for s in (".hea", ".HEA")))


def recording_format(path: Path) -> str:
    """'table', 'npy', 'npz', 'mat', 'wfdb' or 'edf' from the extension.

    Raises:
        BadRecordingError 'unknown_format' for any other extension, or a WFDB data file (.dat, or .mat with a
        .hea beside it: name its .hea)."""
    suffix = path.suffix.lower()
    if _is_wfdb_data(path):
        raise BadRecordingError(f"{path.name}: a WFDB data file; give its header ({path.stem}.hea)",
                                kind="unknown_format")
    if suffix not in FORMAT_BY_SUFFIX:
        raise BadRecordingError(f"{path.name}: unknown extension {suffix or '(none)'!r}; known: "
                                f"{', '.join(sorted(FORMAT_BY_SUFFIX))}", kind="unknown_format")
    return FORMAT_BY_SUFFIX[suffix]


def read_recording(path: Path, fs: float | None = None, column: str | None = None,
                   patterns: Sequence[str] = PPG_PATTERNS, max_gap_s: float = MAX_GAP_S) -> Recording:
    """Any supported PPG recording -> Recording (format from the extension; see `recording_format`).

    Args:
        fs: rate in Hz, needed where the file cannot state it (a table without a time column, a .npy).
        column: the PPG column of a table, or the signal name of a WFDB/EDF record.
        patterns: the PPG name patterns tried when `column` is None (preprocessing.ppg_channels).
        max_gap_s: longer missing stretches stay gaps (NaN).
    Raises:
        BadRecordingError naming the file and the problem.
    """
    path = Path(path)
    kind = recording_format(path)
    if not path.is_file():
        raise BadRecordingError(f"{path}: file not found", kind="missing_file")
    if path.stat().st_size == 0:
        raise BadRecordingError(f"{path.name}: empty file", kind="empty_file")
    content = content_format(path)
    readers = {"table": lambda: read_table(path, fs, column, patterns, max_gap_s),
               "npy": lambda: read_npy(path, fs, max_gap_s),
               "npz": lambda: read_named_arrays(path, "npz", fs, column, patterns, max_gap_s),
               "mat": lambda: read_named_arrays(path, "mat", fs, column, patterns, max_gap_s),
               "wfdb": lambda: read_wfdb(path, column, patterns, max_gap_s),
               "edf": lambda: read_edf_ppg(path, column, patterns, max_gap_s)}
    with naming_file(path):
        rec = readers[content or kind]()
    if content and content != kind:
        rec.info["warnings"].insert(0, f"{path.name} holds {FORMAT_NAMES[content]}, not what its extension "
                                       f"{path.suffix!r} says; read as such")
    stated = rec.info["fs_source"]
    if fs is not None and stated and abs(rec.info["fs_found"] - fs) > RATE_SNAP_TOLERANCE * fs:
        rec.info["warnings"].append(f"{stated} gives {rec.info['fs_found']:.6g} Hz and --fs (inference.ppg_fs) "
                                    f"{fs:g} Hz: read at {rec.info['fs_found']:.6g} Hz (--fs applies only to "
                                    "files that state no rate)")
    return rec


@contextlib.contextmanager
def naming_file(path: Path) -> Iterator[None]:
    """Re-raise a BadRecordingError whose message does not name `path` with the file name in front."""
    try:
        yield
    except BadRecordingError as err:
        if path.name in str(err):
            raise
        raise BadRecordingError(f"{path.name}: {err}", kind=err.kind) from None


def is_recording_file(path: Path) -> bool:
    """Whether a file found in a folder is a recording to stage (a known extension; WFDB data files are
    part of their .hea record)."""
    return path.suffix.lower() in FORMAT_BY_SUFFIX and not _is_wfdb_data(path)


def wfdb_data_files(header: Path) -> list[Path]:
    """The existing data files a WFDB header names (any name: converters often write e.g. signals.dat), in
    its folder; <stem>.dat/.mat when the header names none or cannot be parsed."""
    try:
        import wfdb

        names = wfdb.rdheader(str(header.with_suffix(""))).file_name or []
    except Exception:  # noqa: BLE001 - a broken header fails where the record is read, with its reason
        names = []
    files = sorted({header.parent / name for name in names if name})
    if not files:
        files = sorted(p for p in header.parent.glob(header.stem + ".*") if p.suffix.lower() in WFDB_DATA_SUFFIXES)
    return [p for p in files if p.is_file()]


def recording_files(path: Path) -> list[Path]:
    """The files a recording is made of (a WFDB header and its data files), for cache signatures."""
    if path.suffix.lower() != ".hea":
        return [path]
    return [path] + wfdb_data_files(path)


def preprocess_file(path: str | Path, n_windows: int = WINDOWS_PER_SUBJECT, method: str = "linear",
                    patterns: Sequence[str] = PPG_PATTERNS, fs: float | None = None, column: str | None = None,
                    max_gap_s: float = MAX_GAP_S) -> dict:
    """Any supported PPG recording -> model input through preprocess_signals (the MESA
    preprocessing); gaps longer than `max_gap_s` are zeroed and their epochs listed in gap_epochs.

    Returns:
        preprocess_signals's dict plus ppg_channel (the column or signal used), source_format, ppg_fs_found
        (the rate the file states or its stamps show) and gaps ([start_s, duration_s]); its filled_samples
        and warnings include the reader's.
    Raises:
        BadRecordingError naming the file and the problem.
    """

    path = Path(path)
    rec = read_recording(path, fs, column, patterns, max_gap_s)
    with naming_file(path):
        out = preprocess_signals(rec.signal_T, rec.fs, n_windows, method, name=path.name,
                                 nan_is_gap=rec.info["source_format"] != "edf" or bool(rec.info["gaps"]))
    out.update(ppg_channel=rec.info["column"], source_format=rec.info["source_format"],
               ppg_fs_found=rec.info["fs_found"], gaps=rec.info["gaps"],
               filled_samples=rec.info["filled_samples"] + out["filled_samples"],
               warnings=rec.info["warnings"] + out["warnings"])
    return out
