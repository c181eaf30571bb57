"""Preprocess MESA polysomnography (EDF + NSRR XML) into the HDF5 windows and labels SleepPPG-Net trains on.

Other NSRR-style cohorts work too: files pair by the subject ID that `preprocessing.id_pattern` (`--id-pattern`,
a regex with one group; MESA's by default) finds in their names, and the annotation of `<stem>.edf` is
`<stem>-nsrr.xml` (NSRR XML) or `<stem>-profusion.xml` (Compumedics Profusion XML; NSRR preferred when both).
IDs that differ only by leading zeros (282, 0282) are all skipped as 'id_clash'.

For every subject with both files: read the PPG (Pleth) and ECG (EKG) channels (our own EDF/BDF reader: one
open and one pass per file), filter, resample to 34.133 Hz (1,024 samples per 30-s epoch), clip at
mean +/- 3 SD and z-score (Kotzen et al. 2023), cut into 1,200 windows (the first 10 h, zero-padded) and
label each 30-s epoch from the XML stage runs (Wake 0, Light 1, Deep 2, REM 3, -1 unscored or beyond the
recording).

Outputs in the output folder (default ./mesa-x; names, keys and attrs as the reference's), rows in sorted
subject-ID order:
- mesa_ppg_with_labels.h5: ppg (N_windows, 1024) float32, labels (N_windows,) int64, subject_ids (N_windows,) S4;
- mesa_real_ecg.h5: ecg (N_windows, 1024) float32 (zeros without ECG), has_real_ecg, subject_ids, labels,
  real_ecg_indices;
- mesa_subject_index.h5: subjects/<id>/window_indices with attrs n_windows, has_ecg, n_recorded_windows;
- data_stats.npy/.txt, failed_subjects.json (id, file, kind, reason per skipped subject),
  subject_warnings.json (id, file, warning per kept subject that looks suspicious), extract_manifest.json
  (settings, sources, subjects: says whether a rerun is up to date), logs/processing.log.

How it runs: worker processes preprocess subjects one at a time and each writes `<out>/.parts/<id>.npz`
(temporary name, then rename), so a run killed at any moment resumes without redoing finished subjects. A
child process then streams the parts, in sorted ID order, into pre-sized HDF5 datasets written under
temporary names and renamed at the end. Memory stays at about one subject per process whatever the cohort size.

Bad data never stops the run: a subject whose EDF or XML is missing, unreadable (no permission), truncated,
not an EDF, has an absurd header field (no signals, record duration 0/negative/NaN, a header size that
disagrees with the signal count, a PPG with no scale or no samples), no PPG channel, a flat or mostly-NaN PPG,
a malformed XML, no stage events, or no scored epoch within the recording is logged, skipped and listed in
failed_subjects.json with its file, kind and reason. Suspicious but usable data (a PPG at its digital limits
for over 5% of the night, stages ending over 30 min before or after the EDF, a record count that disagrees
with the file size, bytes after the last record, two channels with the same label, an unusable ECG) is kept
and listed in subject_warnings.json. A damaged part file from an earlier run is detected (each array's CRC-32
and shape) and rebuilt.

Exit status: 0 every subject done; 1 some subjects failed; 2 bad setup (a missing or unreadable folder, an
output folder that is a file or not writable, no subjects, a bad config) or a full disk (one line saying how
much to free; run the same command again); 130 on Ctrl-C (finished subjects are kept).

DREAMT (`--format dreamt --csv-dir DIR`, or preprocessing.format/csv_dir): one CSV per participant
(S002_whole_df.csv -> subject S002) read by recording_formats.preprocess_dreamt: the `preprocessing.ppg_column`
(BVP) signal, the ECG column when present, stages from Sleep_Stage; epochs start at lights-off (the first
sample not staged P). The same preprocessing, part files, outputs and bad-subject handling as the EDF path.

Usage: python extract_mesa_data.py --config configs/config_cloud.yaml --workers 8
       python extract_mesa_data.py --format dreamt --csv-dir ./DREAMT/data_64Hz --out-dir ./dreamt-x
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import errno
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from sleepppg.cli import setup_logging
from sleepppg.config import load_config
from sleepppg.constants import (CONCEPT_TO_CLASS, ECG_FILE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP,
                                IGNORE_INDEX, INDEX_FILE, MESA_ID_PATTERN, PPG_FILE, SAMPLES_PER_WINDOW, STAGE_NAMES,
                                TARGET_FS, WINDOWS_PER_SUBJECT, WINDOW_SECONDS)
from sleepppg.errors import ConfigError, SetupError
from sleepppg.ids import compile_id_pattern
from sleepppg.runio import atomic_output, write_text_atomic
from sleepppg.runtime import keep_freed_memory

log = logging.getLogger("extract_mesa_data")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "config_cloud.yaml"
PPG_PATTERNS = ("pleth", "ppg", "bvp")  # the PPG is a label containing one of these (any case), highest rate
FAILED_FILE = "failed_subjects.json"
MANIFEST_FILE = "extract_manifest.json"
WARNINGS_FILE = "subject_warnings.json"  # subjects kept despite something suspicious (id, file, warning)
PARTS_DIR = ".parts"
DREAMT_KEYS = ("ppg_column", "nominal_fs", "max_gap_s")  # preprocessing keys only DREAMT extraction uses
# The one preprocessing version: bump it whenever EDF reading, preprocessing, labelling or the part layout
# changes. Extraction's part files and inference's per-night caches built by another version are rebuilt.
PREPROCESSING_VERSION = 2

# PPG: Chebyshev II low-pass, order 8, 40 dB stop band, 8 Hz (SleepPPG-Net, Kotzen et al. 2023)
PPG_FILTER_ORDER = 8
PPG_STOP_DB = 40.0
PPG_CUTOFF_HZ = 8.0
# ECG: Butterworth band-pass, order 4, 0.5-40 Hz (the reference); the upper edge is capped below Nyquist
ECG_FILTER_ORDER = 4
ECG_BAND_HZ = (0.5, 40.0)
ECG_MAX_NYQUIST_FRACTION = 0.99  # as the reference: upper edge at 0.99 x Nyquist when 40 Hz is above it
CLIP_SD = 3.0  # clip at mean +/- 3 SD before z-scoring
ZSCORE_EPS = 1e-8  # as the reference, avoids 0/0 on a constant signal
MAX_NONFINITE_FRACTION = 0.01  # up to 1% NaN/inf samples (short dropouts) are interpolated; more -> bad
MAX_FLAT_FRACTION = 0.5  # a PPG whose 30-s segments are constant in more than half the night is "flat"
NSRR_ROOT = "PSGAnnotation"  # root element of NSRR XML
PROFUSION_ROOT = "CMPStudyConfig"  # root element of Compumedics Profusion XML
# Profusion <SleepStage> integer -> 4-class label: 0 Wake, 1 N1 / 2 N2 -> Light, 3 N3 / 4 stage 4 -> Deep,
# 5 REM; any other value (movement, unscored) -> -1
PROFUSION_STAGE_TO_CLASS = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3}
EPOCH_TOLERANCE = 1e-6  # in epochs: XML times like 29.9999999 s count as the 30-s boundary

# EDF/BDF files (layout in the "EDF reading" section below)
EDF_FIXED_HEADER_BYTES = 256
EDF_SIGNAL_HEADER_BYTES = 256  # per signal: the widths below add up to 256
EDF_SIGNAL_FIELDS = (("label", 16), ("transducer", 80), ("physical_dimension", 8), ("physical_min", 8),
                     ("physical_max", 8), ("digital_min", 8), ("digital_max", 8), ("prefiltering", 80),
                     ("samples_per_record", 8), ("reserved", 32))
VOLTS_PER_UNIT = {"uV": 1e-6, "\u00b5V": 1e-6, "\u03bcV": 1e-6, "mV": 1e-3}  # voltage channels in volts, as mne
MAX_SAMPLING_RATE_HZ = 100_000.0  # far above any PSG channel: a higher rate means a broken header
READ_BLOCK_BYTES = 8 * 2**20  # data records are read in blocks of about 8 MB (memory stays ~1 channel per night)
SATURATION_WARN_FRACTION = 0.05  # warn when more of the PPG than this sits at its digital limits
LABEL_HORIZON_EPOCHS = 2880  # stages are read over 24 h to compare the XML's length with the EDF's
XML_LENGTH_WARN_S = 1800.0  # warn when the stages end more than 30 min before or after the EDF does


class BadRecordingError(ValueError):
    """One subject's data cannot be used; `kind` is a short machine-readable reason (e.g. 'no_ppg_channel'),
    `path` the file at fault when it is not the EDF (e.g. the XML)."""

    def __init__(self, message: str, kind: str = "bad_recording", path: str | os.PathLike | None = None):
        super().__init__(message or kind.replace("_", " "))  # never an empty reason
        self.kind = kind
        self.path = None if path is None else str(path)


# ----------------------------------------------------------------------------------------------------------
# Channels


def find_ppg_channel(labels: list[str], rates: list[float],
                     patterns: tuple[str, ...] | list[str] = PPG_PATTERNS) -> str | None:
    """The PPG channel: among the labels containing one of `patterns` (any case), the one with the highest
    sampling rate; on a tie the first. None when no label matches.

    The rate decides because a label only has to contain the pattern: a 1-Hz `PlethStatus` (the oximeter's
    status/quality signal) listed before the 256-Hz `Pleth` waveform must not be taken for the PPG.

    Args:
        labels: channel labels, in file order.
        rates: sampling rate of each label, Hz (same order and length).
    """
    if len(labels) != len(rates):
        raise ValueError(f"{len(labels)} labels but {len(rates)} rates")
    best = None
    for name, rate in zip(labels, rates):
        low = name.lower()
        if any(p.lower() in low for p in patterns) and (best is None or rate > best[1]):
            best = (name, rate)
    return best[0] if best else None


def _log_ppg_choice(edf_path: Path, chosen: str, labels: list[str], rates: list[float],
                    patterns: tuple[str, ...] | list[str]) -> None:
    """Log the PPG channel used: INFO when several labels matched (the rate decided), else DEBUG."""
    matches = [f"{name} ({rate:g} Hz)" for name, rate in zip(labels, rates)
               if any(p.lower() in name.lower() for p in patterns)]
    level = logging.INFO if len(matches) > 1 else logging.DEBUG
    log.log(level, "%s: PPG channel %r (highest rate among %s)", edf_path.name, chosen, ", ".join(matches))


def find_ecg_channel(ch_names: list[str]) -> str | None:
    """The ECG channel: an ecg/ekg label with lead II ('ii' or '2') first, then any ecg, then any ekg."""
    rules = (
        lambda s: ("ecg" in s or "ekg" in s) and ("ii" in s or "2" in s),
        lambda s: "ecg" in s,
        lambda s: "ekg" in s,
    )
    for rule in rules:
        for name in ch_names:
            if rule(name.lower()):
                return name
    return None


# ----------------------------------------------------------------------------------------------------------
# Signal preprocessing (Kotzen et al. 2023, as the reference implements it)


def _fs_fraction(fs: float) -> Fraction:
    return Fraction(fs).limit_denominator(1_000_000)


def resampled_length(n_samples: int, fs: float) -> int:
    """Samples at TARGET_FS covering `n_samples` at `fs` (floor of duration x 34.133 Hz, exact arithmetic:
    a 10-h night at 256 Hz gives exactly 1,228,800)."""
    return math.floor(n_samples * Fraction(SAMPLES_PER_WINDOW, WINDOW_SECONDS) / _fs_fraction(fs))


def resample(x: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """Resample `x` (1-D, at `fs` Hz) to TARGET_FS; returns float64 of length `resampled_length`.

    'linear' is the reference's: linear interpolation of the new samples spread evenly over the old index
    range [0, n-1]. 'polyphase' uses scipy.signal.resample_poly with the exact ratio (256 Hz -> up 2, down 15).
    """
    if x.size < 2:
        raise ValueError(f"need at least 2 samples to resample, got {x.size}")
    n_out = resampled_length(x.size, fs)
    if method == "linear":
        # np.interp(new_idx, arange(n), x) written out for a unit-spaced grid: the same arithmetic
        # (x[i] + slope * offset), bit for bit, without np.interp's binary search (2x faster on a night)
        new_idx = np.linspace(0.0, x.size - 1, n_out)
        left = np.minimum(new_idx.astype(np.int64), x.size - 2)
        out = (x[left + 1] - x[left]) * (new_idx - left) + x[left]
        if n_out and new_idx[-1] == x.size - 1:
            out[-1] = x[-1]  # np.interp returns the last sample exactly
        return out
    if method == "polyphase":
        from scipy.signal import resample_poly

        ratio = Fraction(SAMPLES_PER_WINDOW, WINDOW_SECONDS) / _fs_fraction(fs)
        return resample_poly(x, ratio.numerator, ratio.denominator)[:n_out]
    raise ValueError(f"unknown resample method {method!r} (linear or polyphase)")


def clip_zscore(x: np.ndarray) -> np.ndarray:
    """Clip at mean +/- 3 SD, then z-score; float32."""
    mu, sd = x.mean(), x.std()
    clipped = np.clip(x, mu - CLIP_SD * sd, mu + CLIP_SD * sd)
    return ((clipped - clipped.mean()) / (clipped.std() + ZSCORE_EPS)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _ppg_sos(fs: float) -> np.ndarray:
    from scipy.signal import cheby2

    return cheby2(PPG_FILTER_ORDER, PPG_STOP_DB, PPG_CUTOFF_HZ, btype="lowpass", output="sos", fs=fs)


@functools.lru_cache(maxsize=16)
def _ecg_sos(fs: float) -> np.ndarray:
    from scipy.signal import butter

    high = min(ECG_BAND_HZ[1], ECG_MAX_NYQUIST_FRACTION * fs / 2)
    return butter(ECG_FILTER_ORDER, [ECG_BAND_HZ[0], high], btype="bandpass", output="sos", fs=fs)


def _check_input(signal: np.ndarray, fs: float, min_fs: float, what: str, inclusive: bool = False) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {signal.shape}")
    if not (fs > min_fs or (inclusive and fs == min_fs)):
        raise BadRecordingError(f"{what} sampled at {fs} Hz; need {'at least' if inclusive else 'more than'} "
                                f"{min_fs} Hz", kind="low_sampling_rate")
    if signal.size < fs * WINDOW_SECONDS:
        raise BadRecordingError(f"{what} shorter than one 30-s epoch ({signal.size} samples at {fs} Hz)",
                                kind="too_short")
    return signal


def preprocess_ppg(signal: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """PPG -> SleepPPG-Net input: Chebyshev II low-pass (order 8, 40 dB, 8 Hz, zero-phase), resample to
    34.133 Hz, clip at mean +/- 3 SD, z-score.

    Args:
        signal: 1-D raw PPG, any unit, at `fs` Hz (finite values; see `repair_nonfinite`).
        fs: sampling rate in Hz, at least 16 (at exactly 16 Hz nothing lies above the 8-Hz cut-off, so the
            low-pass is skipped).
        method: 'linear' (the reference) or 'polyphase'.
    Returns:
        float32 1-D array of `resampled_length(len(signal), fs)` samples (the whole night, not truncated).
    """
    from scipy.signal import sosfiltfilt

    x = _check_input(signal, fs, 2 * PPG_CUTOFF_HZ, "PPG", inclusive=True)
    if fs > 2 * PPG_CUTOFF_HZ:
        x = sosfiltfilt(_ppg_sos(float(fs)), x)
    return _finite(clip_zscore(resample(x, fs, method)), "PPG")


def preprocess_ecg(signal: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """ECG -> Butterworth band-pass (order 4, 0.5-40 Hz, zero-phase; upper edge capped at 0.99 x Nyquist),
    then the same resample, clip and z-score as `preprocess_ppg`. Returns float32 1-D at 34.133 Hz."""
    from scipy.signal import sosfiltfilt

    x = _check_input(signal, fs, 2 * ECG_BAND_HZ[0] / ECG_MAX_NYQUIST_FRACTION, "ECG")
    return _finite(clip_zscore(resample(sosfiltfilt(_ecg_sos(float(fs)), x), fs, method)), "ECG")


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    """`x` unchanged, or BadRecordingError when filtering overflowed (values near the float64 limit)."""
    if not np.isfinite(x).all():
        raise BadRecordingError(f"{what}: values too large to filter (the result is not finite)", kind="nan_signal")
    return x


def to_windows(x: np.ndarray, n_windows: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """Cut a 1-D signal at 34.133 Hz into (n_windows, 1024) float32: truncated, or zero-padded at the end."""
    out = np.zeros(n_windows * SAMPLES_PER_WINDOW, dtype=np.float32)
    n = min(x.size, out.size)
    out[:n] = x[:n]
    return out.reshape(n_windows, SAMPLES_PER_WINDOW)


def repair_nonfinite(x: np.ndarray, what: str) -> np.ndarray:
    """Linearly interpolate NaN/inf samples when they are at most 1% of the signal (short dropouts);
    raise BadRecordingError (kind 'nan_signal') when there are more."""
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x
    if n_bad > MAX_NONFINITE_FRACTION * x.size:
        raise BadRecordingError(f"{what}: {n_bad} of {x.size} samples are NaN/inf "
                                f"(more than {MAX_NONFINITE_FRACTION:.0%})", kind="nan_signal")
    idx = np.arange(x.size)
    x = x.copy()
    x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x


def flat_fraction(x: np.ndarray, fs: float) -> float:
    """Share of whole 30-s segments of `x` whose values are all equal (sensor off or saturated); a signal
    shorter than one segment counts as one segment."""
    seg = max(1, int(round(fs * WINDOW_SECONDS)))
    n_seg = max(1, x.size // seg)
    segments = x[:n_seg * seg].reshape(n_seg, -1)
    if segments.size == 0:
        return 1.0
    return float(np.mean(segments.max(axis=1) == segments.min(axis=1)))


# ----------------------------------------------------------------------------------------------------------
# Labels: NSRR and Profusion XML -> Wake 0, Light 1 (N1, N2), Deep 2 (N3, stage 4), REM 3, -1 otherwise


def _child_text(event: ET.Element, tag: str) -> str | None:
    child = event.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _parse_xml(xml_path: str | os.PathLike) -> ET.Element:
    """The root element of an annotation file; BadRecordingError 'missing_xml', 'unreadable_xml' (no read
    permission, an I/O error) or 'malformed_xml' (not well-formed XML)."""
    try:
        with open(xml_path, "rb") as fh:
            return ET.parse(fh).getroot()
    except FileNotFoundError:
        raise BadRecordingError(f"XML not found: {xml_path}", kind="missing_xml") from None
    except PermissionError:
        raise BadRecordingError(f"unreadable XML {xml_path}: no permission to read it", kind="unreadable_xml") from None
    except OSError as err:
        raise BadRecordingError(f"unreadable XML {xml_path}: {err.strerror or err}", kind="unreadable_xml") from None
    except (ET.ParseError, UnicodeDecodeError, ValueError) as err:
        raise BadRecordingError(f"malformed XML {xml_path}: {err}", kind="malformed_xml") from None


def xml_to_labels(xml_path: str | os.PathLike, n_windows: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """Annotation XML -> one 4-class label per 30-s epoch (Wake 0, Light 1, Deep 2, REM 3, -1 unscored).

    The dialect is read from the root element: `PSGAnnotation` is NSRR XML (`nsrr_labels`), `CMPStudyConfig`
    is Compumedics Profusion XML (`profusion_labels`). Both give the same labels for the same scoring.

    Returns:
        int64 array (n_windows,).
    Raises:
        BadRecordingError with `path` = the XML: kind 'missing_xml', 'unreadable_xml', 'malformed_xml',
            'no_stage_events', 'unknown_xml_dialect' (a root of neither dialect: no stages are guessed from it)
            or 'unsupported_epoch_length'.
    """
    try:
        root = _parse_xml(xml_path)
        name = Path(xml_path).name
        if root.tag == NSRR_ROOT:
            return nsrr_labels(root, name, n_windows)
        if root.tag == PROFUSION_ROOT:
            return profusion_labels(root, name, n_windows)
        raise BadRecordingError(f"{name}: neither NSRR XML (root <{NSRR_ROOT}>) nor Profusion XML (root "
                                f"<{PROFUSION_ROOT}>): the root element is <{root.tag}>", kind="unknown_xml_dialect")
    except BadRecordingError as err:
        err.path = str(xml_path)  # the failure list names the XML, not the EDF
        raise


def nsrr_labels(root: ET.Element, name: str, n_windows: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """NSRR XML stage runs -> one 4-class label per 30-s epoch.

    Epoch i covers [30 i, 30 i + 30) s from the recording start; a stage event (EventType 'Stages|Stages')
    labels every epoch whose start lies in [Start, Start + Duration). Where runs overlap, the later event in
    the file wins. Concepts map through CONCEPT_TO_CLASS (Movement, Unscored and unknown concepts -> -1);
    epochs no run covers stay -1; events past `n_windows` epochs are ignored.

    Args:
        root: the parsed `<PSGAnnotation>` element; name: the file name, for messages.
    Raises:
        BadRecordingError: kind 'malformed_xml' (a stage event without a numeric Start/Duration) or
            'no_stage_events'.
    """
    labels = np.full(n_windows, IGNORE_INDEX, dtype=np.int64)
    n_stage_events = 0
    for event in root.iter("ScoredEvent"):
        if _child_text(event, "EventType") != "Stages|Stages":
            continue
        n_stage_events += 1
        concept = _child_text(event, "EventConcept")
        try:
            start = float(_child_text(event, "Start"))
            duration = float(_child_text(event, "Duration"))
        except (TypeError, ValueError):
            raise BadRecordingError(f"{name}: stage event {n_stage_events} has no numeric "
                                    "Start/Duration", kind="malformed_xml") from None
        if not math.isfinite(start + duration) or duration <= 0:  # NaN, inf, or a sum that overflows
            continue
        first = max(0, math.ceil(start / WINDOW_SECONDS - EPOCH_TOLERANCE))
        stop = min(n_windows, math.ceil((start + duration) / WINDOW_SECONDS - EPOCH_TOLERANCE))
        if first < stop:
            labels[first:stop] = CONCEPT_TO_CLASS.get(concept, IGNORE_INDEX)
    if n_stage_events == 0:
        raise BadRecordingError(f"{name}: no stage events (EventType 'Stages|Stages')", kind="no_stage_events")
    return labels


def profusion_labels(root: ET.Element, name: str, n_windows: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """Compumedics Profusion XML -> one 4-class label per 30-s epoch.

    Profusion lists one `<SleepStage>` integer per scoring epoch of `<EpochLength>` seconds, from the
    recording start, inside `<SleepStages>`: 0 Wake, 1 N1, 2 N2, 3 N3, 4 stage 4, 5 REM, anything else
    unscored (PROFUSION_STAGE_TO_CLASS, the same classes as the NSRR concepts). With 30-s epochs stage i is
    the label of epoch i. Another EpochLength is put onto 30-s epochs exactly: a 30-s epoch gets a label when
    every Profusion epoch overlapping it has that label, else -1 (it mixes stages, or runs past the scoring).

    Args:
        root: the parsed `<CMPStudyConfig>` element; name: the file name, for messages.
    Raises:
        BadRecordingError: kind 'no_stage_events' (no `<SleepStage>`), 'malformed_xml' (a stage that is not an
            integer) or 'unsupported_epoch_length' (EpochLength missing, not a number or not > 0).
    """
    stages = root.findall("SleepStages/SleepStage")
    if not stages:
        raise BadRecordingError(f"{name}: Profusion XML without stages (no <SleepStages>/<SleepStage>)",
                                kind="no_stage_events")
    epoch_text = (root.findtext("EpochLength") or "").strip()
    try:
        epoch_s = Fraction(epoch_text).limit_denominator(1000)
    except (ValueError, ZeroDivisionError):
        epoch_s = None
    if epoch_s is None or epoch_s <= 0:
        raise BadRecordingError(f"{name}: EpochLength {epoch_text!r} is not a positive number of seconds",
                                kind="unsupported_epoch_length")
    classes = np.empty(len(stages), dtype=np.int64)
    for i, stage in enumerate(stages):
        try:
            classes[i] = PROFUSION_STAGE_TO_CLASS.get(int((stage.text or "").strip()), IGNORE_INDEX)
        except ValueError:
            raise BadRecordingError(f"{name}: SleepStage {i + 1} is not an integer: {stage.text!r}",
                                    kind="malformed_xml") from None
    labels = np.full(n_windows, IGNORE_INDEX, dtype=np.int64)
    n_mixed = 0
    for j in range(n_windows):
        first = WINDOW_SECONDS * j // epoch_s  # Profusion epochs overlapping [30 j, 30 j + 30)
        stop = math.ceil(Fraction(WINDOW_SECONDS * (j + 1)) / epoch_s)
        if stop > classes.size:
            break
        covering = classes[first:stop]
        if (covering == covering[0]).all():
            labels[j] = covering[0]
        else:
            n_mixed += 1
    if epoch_s != WINDOW_SECONDS:
        log.info("%s: Profusion epochs of %s s put onto 30-s epochs; %d of them mix stages and are left "
                 "unscored (-1)", name, epoch_s, n_mixed)
    return labels


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
            disagrees with the number of signals, records without samples).
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
    return EdfHeader(path, bytes_per_sample, header_bytes, n_records, record_s, signals, tuple(warnings))


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

    Returns:
        dict(ppg=float64 1-D, ppg_fs=Hz, ppg_channel=label, ecg=float64 1-D or None, ecg_fs=Hz or None,
        ecg_channel=label or None, duration_s=PPG duration in s, warnings=list of str). Values are physical,
        in volts for uV/mV channels (as mne gives them), else in the channel's own unit. An ECG that cannot
        be read is dropped with a warning.
    Raises:
        BadRecordingError: kind 'missing_edf', 'unreadable_edf' (not an EDF, no read permission, I/O error),
            'truncated_edf', 'bad_edf_header' (see `read_edf_header`; the PPG channel's own scale or rate
            included) or 'no_ppg_channel'.
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
            digital = _read_digital(fh, header, [s.index for s in wanted])
    except FileNotFoundError:
        raise BadRecordingError(f"EDF not found: {edf_path}", kind="missing_edf") from None
    except PermissionError:
        raise BadRecordingError(f"unreadable EDF {edf_path}: no permission to read it",
                                kind="unreadable_edf") from None
    except OSError as err:
        raise BadRecordingError(f"unreadable EDF {edf_path}: {err.strerror or err}", kind="unreadable_edf") from None
    saturated = saturated_fraction(digital[0], ppg_signal, header.bytes_per_sample)
    if saturated > SATURATION_WARN_FRACTION:
        warnings.append(f"PPG {ppg_signal.label!r} sits at its digital limits (saturated, or dropout markers) "
                        f"for {saturated:.0%} of the recording")
    ppg = to_physical(digital[0], ppg_signal)
    ecg = to_physical(digital[1], ecg_signal) if ecg_signal is not None else None
    return {"ppg": ppg, "ppg_fs": ppg_signal.fs, "ppg_channel": ppg_signal.label,
            "ecg": ecg, "ecg_fs": ecg_signal.fs if ecg_signal is not None else None,
            "ecg_channel": ecg_signal.label if ecg_signal is not None else None,
            "duration_s": header.n_records * header.record_s, "warnings": warnings}


def bridge_gaps(x: np.ndarray, fs: float, n_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill the gaps (NaN samples) of a signal by linear interpolation, for filtering, and flag the 30-s
    epochs they touch (those epochs are not staged).

    Returns:
        (float64 signal without NaN, bool (n_windows,) True for an epoch holding any gap sample).
    Raises:
        BadRecordingError 'no_signal' when every sample is missing.
    """
    gap_T = np.isnan(x)
    gap_W = np.zeros(n_windows, dtype=bool)
    if not gap_T.any():
        return x, gap_W
    if gap_T.all():
        raise BadRecordingError("every sample is missing", kind="no_signal")
    idx = np.flatnonzero(gap_T)
    filled = x.copy()
    filled[idx] = np.interp(idx, np.flatnonzero(~gap_T), x[~gap_T])
    epochs = np.unique((idx / (fs * WINDOW_SECONDS)).astype(np.int64))
    gap_W[epochs[epochs < n_windows]] = True
    return filled, gap_W


def preprocess_signals(ppg: np.ndarray, ppg_fs: float, n_windows: int = WINDOWS_PER_SUBJECT,
                       method: str = "linear", ecg: np.ndarray | None = None, ecg_fs: float | None = None,
                       name: str = "", nan_is_gap: bool = False, ppg_what: str = "PPG",
                       ecg_what: str = "ECG") -> dict:
    """The one preprocessing of a recording, whatever its file format: PPG (and ECG) -> model input.

    Args:
        ppg: 1-D raw PPG at `ppg_fs` Hz. NaN/inf samples: up to 1% are interpolated, more make the recording
            bad, unless `nan_is_gap`, where NaN marks gaps (see `bridge_gaps`): bridged for filtering, their
            epochs zeroed and listed in `gap_epochs`.
        ecg, ecg_fs: optional ECG; one that is flat or mostly NaN is dropped (has_ecg False), with a warning.
        name: the recording's name, for log lines; ppg_what, ecg_what: how messages name the signals (e.g.
            "PPG 'Pleth'", with the channel).
    Returns:
        dict(ppg_windows (n_windows, 1024) float32, ecg_windows (n_windows, 1024) float32 or None, has_ecg,
        n_recorded_windows = epochs holding recorded PPG (at most n_windows), gap_epochs = sorted epoch
        indices touched by a gap (empty without gaps), ppg_fs, duration_s = the PPG's length in s,
        warnings = list of str: what looked wrong without stopping the night, e.g. a dropped ECG).
    Raises:
        BadRecordingError: 'nan_signal', 'no_signal', 'flat_ppg', 'too_short', 'low_sampling_rate'.
    """
    ppg = np.asarray(ppg, dtype=np.float64)
    gap_W = np.zeros(n_windows, dtype=bool)
    if nan_is_gap:
        ppg, gap_W = bridge_gaps(ppg, ppg_fs, n_windows)
    ppg = repair_nonfinite(ppg, ppg_what)
    flat = flat_fraction(ppg, ppg_fs)
    if flat > MAX_FLAT_FRACTION:
        raise BadRecordingError(f"flat {ppg_what}: {flat:.0%} of 30-s segments are constant", kind="flat_ppg")
    ppg_z = preprocess_ppg(ppg, ppg_fs, method)
    ppg_windows = to_windows(ppg_z, n_windows)
    ppg_windows[gap_W] = 0.0  # gap epochs hold no recorded signal, like the padding
    ecg_windows, warnings = None, []
    if ecg is not None:
        try:
            ecg = repair_nonfinite(np.asarray(ecg, dtype=np.float64), ecg_what)
            if flat_fraction(ecg, ecg_fs) > MAX_FLAT_FRACTION:
                raise BadRecordingError(f"flat {ecg_what}", kind="flat_ecg")
            ecg_windows = to_windows(preprocess_ecg(ecg, ecg_fs, method), n_windows)
        except BadRecordingError as err:
            warnings.append(f"ECG not used: {err}")
            log.warning("%s: ECG not used (%s)", name, err)
    return {
        "ppg_windows": ppg_windows,
        "ecg_windows": ecg_windows,
        "has_ecg": ecg_windows is not None,
        "n_recorded_windows": max(1, min(n_windows, math.ceil(ppg_z.size / SAMPLES_PER_WINDOW))),
        "gap_epochs": np.flatnonzero(gap_W).tolist(),
        "ppg_fs": ppg_fs,
        "duration_s": ppg.size / ppg_fs,
        "warnings": warnings,
    }


def preprocess_recording(edf_path: str | os.PathLike, n_windows: int = WINDOWS_PER_SUBJECT,
                         method: str = "linear", ppg_patterns: tuple[str, ...] | list[str] = PPG_PATTERNS,
                         with_ecg: bool = True) -> dict:
    """Read one EDF and turn it into model input with `preprocess_signals` (`with_ecg=False`: PPG only, the
    ECG is neither read nor filtered; PPG-only inference uses this).

    Returns:
        `preprocess_signals`'s dict plus ppg_channel (the EDF label used); its warnings include the reader's
        (record count, trailing bytes, repeated labels, a saturated PPG, an unusable ECG).
    Raises:
        BadRecordingError: reading errors (see `read_edf`) and those of `preprocess_signals`; no other
            exception for anything in the file.
    """
    rec = read_edf(edf_path, ppg_patterns, with_ecg=with_ecg)
    name = Path(edf_path).name
    for text in rec["warnings"]:
        log.warning("%s: %s", name, text)
    out = preprocess_signals(rec["ppg"], rec["ppg_fs"], n_windows, method, rec["ecg"], rec["ecg_fs"], name=name,
                             ppg_what=f"PPG {rec['ppg_channel']!r}", ecg_what=f"ECG {rec['ecg_channel']!r}")
    out["ppg_channel"] = rec["ppg_channel"]
    out["warnings"] = rec["warnings"] + out["warnings"]
    return out


# ----------------------------------------------------------------------------------------------------------
# One subject -> one part file (runs in worker processes)


def file_signature(path: str | os.PathLike | None) -> dict | None:
    """What identifies a source file cheaply: absolute path, size (bytes) and mtime (ns); None when absent.
    A moved, rewritten or touched file counts as changed."""
    if path is None:
        return None
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    return {"path": str(path.resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def preprocessing_settings(resample_method: str, ppg_channels: Iterable[str], n_windows: int) -> dict:
    """Every setting a preprocessed night depends on, PREPROCESSING_VERSION included; extraction's part
    files and inference's caches are reused only while this dict is unchanged."""
    return {"version": PREPROCESSING_VERSION, "resample_method": resample_method,
            "ppg_channels": [p.lower() for p in ppg_channels], "n_windows": int(n_windows),
            "samples_per_window": SAMPLES_PER_WINDOW, "target_fs": TARGET_FS}


def input_signature(settings: dict, *paths: str | os.PathLike | None) -> str:
    """One hash of the preprocessing settings (`preprocessing_settings`) and the source files'
    `file_signature`s: equal hashes mean an earlier result for these inputs can be reused."""
    text = json.dumps({"settings": settings, "files": [file_signature(p) for p in paths]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class BadPartError(RuntimeError):
    """A part file is damaged (truncated, bad CRC, wrong arrays); `part` is its path. It is rebuilt."""

    def __init__(self, message: str, part: str | os.PathLike):
        super().__init__(message)
        self.part = str(part)


def _part_arrays(rec: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {"ppg": rec["ppg_windows"], "labels": labels}
    if rec["has_ecg"]:
        arrays["ecg"] = rec["ecg_windows"]
    return arrays


def read_part(part: Path, n_windows: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of one part file, checked: every array is read in full, which checks its CRC-32
    (np.savez stores each array as a zip member with its checksum), and shapes and dtypes must match the meta.

    Raises:
        BadPartError: naming the file and the problem.
    """
    try:
        with np.load(part, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {name: npz[name] for name in npz.files if name != "meta"}
    except FileNotFoundError:
        raise BadPartError(f"part file {part} is missing", part) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise BadPartError(f"part file {part} is damaged ({type(err).__name__}: {err})", part) from None
    expected = {"ppg": ((n_windows, SAMPLES_PER_WINDOW), np.float32), "labels": ((n_windows,), np.int64)}
    if isinstance(meta, dict) and meta.get("has_ecg"):
        expected["ecg"] = ((n_windows, SAMPLES_PER_WINDOW), np.float32)
    if not isinstance(meta, dict) or sorted(arrays) != sorted(expected) or any(
            arrays[k].shape != shape or arrays[k].dtype != dtype for k, (shape, dtype) in expected.items()):
        raise BadPartError(f"part file {part} holds unexpected arrays "
                           f"{ {k: (v.shape, str(v.dtype)) for k, v in arrays.items()} }", part)
    return meta, arrays


def _read_part_meta(part: Path) -> dict | None:
    """The meta of a part file, or None when it cannot be read (cheap: the arrays are not read)."""
    try:
        with np.load(part, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return meta if isinstance(meta, dict) else None


def _labels_for(labels_long: np.ndarray, xml: str, rec: dict, n_windows: int) -> tuple[np.ndarray, list[str]]:
    """From the XML's labels over LABEL_HORIZON_EPOCHS (`xml_to_labels`): the labels of the first
    `n_windows` epochs (-1 after the recording) and warnings about the XML's length against the EDF's.

    Raises:
        BadRecordingError: 'no_scored_epochs' when no epoch within the recording carries a stage (e.g. every
            stage lies after the recording ends).
    """
    labels = labels_long[:n_windows].copy()
    labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
    scored = np.flatnonzero(labels_long != IGNORE_INDEX)
    hours = rec["duration_s"] / 3600
    if not (labels != IGNORE_INDEX).any():
        where = (f"stages span {scored[0] * WINDOW_SECONDS / 3600:.2f}-{(scored[-1] + 1) * WINDOW_SECONDS / 3600:.2f} h"
                 if scored.size else "no epoch carries a sleep stage")
        raise BadRecordingError(f"no scored epoch within the first {rec['n_recorded_windows']} recorded epochs "
                                f"(EDF {hours:.2f} h; {where})", kind="no_scored_epochs", path=xml)
    warnings = []
    stage_end_s = (scored[-1] + 1) * WINDOW_SECONDS
    if abs(stage_end_s - rec["duration_s"]) > XML_LENGTH_WARN_S:
        warnings.append(f"the XML's stages end at {stage_end_s / 3600:.2f} h but the EDF lasts {hours:.2f} h")
    return labels, warnings


def process_subject(job: dict) -> dict:
    """Preprocess one subject and write `<parts>/<id>.npz` atomically.

    Args:
        job: dict(id, edf, xml, part, signature, windows_per_subject, resample_method, ppg_channels, format;
            with format 'dreamt' also ppg_column, nominal_fs, max_gap_s, and edf = xml = the participant's CSV).
    Returns:
        dict(id, ok, kind, reason, file, warnings, seconds, has_ecg, n_recorded_windows); bad data gives
        ok=False with the reason and the file at fault instead of raising.
    Raises:
        OSError: only when the part cannot be written (a full disk): that stops the run, not the subject.
    """
    t0 = time.perf_counter()
    sid = job["id"]
    n_windows = job["windows_per_subject"]
    try:
        if job.get("format") == "dreamt":
            import recording_formats

            labels, rec = recording_formats.preprocess_dreamt(job["edf"], n_windows, job["resample_method"],
                                                              job["ppg_column"], job["nominal_fs"], job["max_gap_s"])
            labels = np.array(labels, dtype=np.int64)
            labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
            xml_warnings = []
        else:
            labels_long = xml_to_labels(job["xml"], max(n_windows, LABEL_HORIZON_EPOCHS))  # first: it is cheap
            rec = preprocess_recording(job["edf"], n_windows, job["resample_method"], tuple(job["ppg_channels"]))
            labels, xml_warnings = _labels_for(labels_long, job["xml"], rec, n_windows)
    except BadRecordingError as err:
        return {"id": sid, "ok": False, "kind": err.kind, "reason": str(err), "file": err.path or job["edf"],
                "warnings": [], "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - a failure nobody foresaw (out of memory, ...) costs this subject only
        log.debug("subject %s failed", sid, exc_info=True)
        return {"id": sid, "ok": False, "kind": "unexpected_error", "reason": f"{type(err).__name__}: {err}",
                "file": job["edf"], "warnings": [], "seconds": time.perf_counter() - t0}
    warnings = rec["warnings"] + xml_warnings
    for text in xml_warnings:
        log.warning("%s: %s", Path(job["xml"]).name, text)
    meta = {"id": sid, "signature": job["signature"], "has_ecg": rec["has_ecg"],
            "n_recorded_windows": rec["n_recorded_windows"], "ppg_channel": rec["ppg_channel"],
            "ppg_fs": rec["ppg_fs"], "warnings": warnings}
    part = Path(job["part"])
    with atomic_output(part) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **_part_arrays(rec, labels), meta=np.array(json.dumps(meta)))
    return {"id": sid, "ok": True, "kind": None, "reason": None, "file": job["edf"], "warnings": warnings,
            "seconds": time.perf_counter() - t0, "has_ecg": rec["has_ecg"],
            "n_recorded_windows": rec["n_recorded_windows"]}


# ----------------------------------------------------------------------------------------------------------
# Assembly: parts -> three HDF5 files


def _compression_args(compression: str) -> dict:
    return {} if compression == "none" else {"compression": compression}


def assemble(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """Stream the part files of `subjects` (sorted) into the three HDF5 files (written under temporary
    names, renamed when complete); return statistics.

    Raises:
        BadPartError: a part file fails its checks (`read_part`); OSError from h5py (a full disk).
    """
    import h5py

    n_windows = settings["windows_per_subject"]
    total = len(subjects) * n_windows
    sid_dtype = f"S{max(4, max(len(s) for s in subjects))}"
    chunk_rows = min(settings["chunk_windows"], total)
    signal_args = dict(shape=(total, SAMPLES_PER_WINDOW), dtype=np.float32, fillvalue=np.float32(0),
                       chunks=(chunk_rows, SAMPLES_PER_WINDOW), **_compression_args(settings["compression"]))
    with contextlib.ExitStack() as stack:
        tmp_ppg, tmp_ecg, tmp_index = (stack.enter_context(atomic_output(out_dir / name))
                                       for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
        f_ppg = stack.enter_context(h5py.File(tmp_ppg, "w"))
        f_ecg = stack.enter_context(h5py.File(tmp_ecg, "w"))
        f_index = stack.enter_context(h5py.File(tmp_index, "w"))
        d_ppg = f_ppg.create_dataset("ppg", **signal_args)
        d_ecg = f_ecg.create_dataset("ecg", **signal_args)
        labels_all = np.empty(total, dtype=np.int64)
        has_ecg_all = np.empty(total, dtype=bool)
        subjects_group = f_index.create_group("subjects")
        for i, sid in enumerate(subjects):
            rows = slice(i * n_windows, (i + 1) * n_windows)
            meta, part = read_part(parts_dir / f"{sid}.npz", n_windows)
            d_ppg[rows] = part["ppg"]
            if meta["has_ecg"]:
                d_ecg[rows] = part["ecg"]  # without ECG the rows keep the fill value 0
            labels_all[rows] = part["labels"]
            has_ecg_all[rows] = meta["has_ecg"]
            g = subjects_group.create_group(sid)
            g.create_dataset("window_indices", data=np.arange(rows.start, rows.stop, dtype=np.int64))
            g.attrs["n_windows"] = n_windows
            g.attrs["has_ecg"] = bool(meta["has_ecg"])
            g.attrs["n_recorded_windows"] = int(meta["n_recorded_windows"])
        subject_ids = np.repeat(np.array(subjects, dtype=sid_dtype), n_windows)
        for f in (f_ppg, f_ecg):
            f.create_dataset("labels", data=labels_all)
            f.create_dataset("subject_ids", data=subject_ids)
        f_ecg.create_dataset("has_real_ecg", data=has_ecg_all)
        f_ecg.create_dataset("real_ecg_indices", data=np.flatnonzero(has_ecg_all).astype(np.int64))
        settings_attrs = {"windows_per_subject": n_windows, "resample_method": settings["resample_method"]}
        f_ppg.attrs.update(sampling_rate=TARGET_FS, window_duration=WINDOW_SECONDS,
                           samples_per_window=SAMPLES_PER_WINDOW, total_windows=total,
                           total_subjects=len(subjects), **settings_attrs)
        n_ecg = int(has_ecg_all.sum())
        f_ecg.attrs.update(windows_with_real_ecg=n_ecg, windows_without_real_ecg=total - n_ecg)
        f_index.attrs.update(total_subjects=len(subjects), total_windows=total, **settings_attrs)
        valid = labels_all[labels_all != IGNORE_INDEX]
        label_counts = {int(k): int(v) for k, v in zip(*np.unique(valid, return_counts=True))}
    return {
        "total_windows": total, "total_subjects": len(subjects), "windows_with_real_ecg": n_ecg,
        "windows_without_real_ecg": total - n_ecg, "ppg_shape": (total, SAMPLES_PER_WINDOW),
        "ecg_shape": (total, SAMPLES_PER_WINDOW), "valid_labels": int(valid.size),
        "label_distribution": label_counts, "sampling_rate": TARGET_FS,
        "window_duration": WINDOW_SECONDS, "samples_per_window": SAMPLES_PER_WINDOW,
        "windows_per_subject": n_windows, "resample_method": settings["resample_method"],
        "file_structure": {PPG_FILE: ["ppg", "labels", "subject_ids"],
                           ECG_FILE: ["ecg", "has_real_ecg", "subject_ids", "labels", "real_ecg_indices"],
                           INDEX_FILE: ["subjects/{subject_id}/window_indices"]},
    }


def write_stats(out_dir: Path, stats: dict) -> None:
    """data_stats.npy (a pickled dict, as the reference: np.load(..., allow_pickle=True).item()) and .txt."""
    with atomic_output(out_dir / "data_stats.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.array(stats, dtype=object), allow_pickle=True)
    lines = ["MESA sleep data processing statistics", "=" * 50, "",
             f"Total windows: {stats['total_windows']}", f"Total subjects: {stats['total_subjects']}",
             f"Windows with real ECG: {stats['windows_with_real_ecg']}",
             f"Windows without real ECG: {stats['windows_without_real_ecg']}",
             f"Valid labels: {stats['valid_labels']}", "", "Label distribution:"]
    lines += [f"  {STAGE_NAMES[k]}: {v}" for k, v in stats["label_distribution"].items()]
    lines += ["", f"Sampling rate: {stats['sampling_rate']} Hz",
              f"Window duration: {stats['window_duration']} seconds",
              f"Samples per window: {stats['samples_per_window']}",
              f"Windows per subject: {stats['windows_per_subject']}",
              f"Resample method: {stats['resample_method']}", ""]
    write_text_atomic(out_dir / "data_stats.txt", "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Driver


def find_subjects(edf_dir: Path, xml_dir: Path, id_pattern: str = MESA_ID_PATTERN
                  ) -> tuple[dict[str, tuple[Path | None, Path | None]], dict[str, tuple[str, str]]]:
    """All subject IDs seen in either folder -> (edf or None, xml or None), plus {id: (kind, reason)} for IDs
    that are not processed: 'duplicate_files' (two files of one kind) and 'id_clash' (IDs that differ only
    by leading zeros, e.g. 282 and 0282: every one of them is skipped, none is guessed).

    Annotations are `<stem>-nsrr.xml` or `<stem>-profusion.xml` (verify_mesa_dataset.pair_files); when an ID
    has both, the NSRR XML is used and the log says so.
    """
    from verify_mesa_dataset import pair_files

    pairing = pair_files(edf_dir, xml_dir, id_pattern)
    problems: dict[str, tuple[str, str]] = {}
    for dup in pairing.duplicates():
        problems[dup["id"]] = ("duplicate_files", f"more than one {dup['kind']} file for this ID: {dup['files']}")
    for clash in pairing.id_clashes():
        for sid in clash["ids"]:
            problems[sid] = ("id_clash", f"IDs {' and '.join(clash['ids'])} differ only by leading zeros "
                                         f"(files {', '.join(clash['files'])}): not paired, rename the files")
    subjects, both = {}, []
    for sid in pairing.ids():
        edfs, annotation = pairing.edf_by_id.get(sid, []), pairing.annotation(sid)
        subjects[sid] = (edf_dir / edfs[0] if edfs else None, xml_dir / annotation[1] if annotation else None)
        if annotation and annotation[2]:
            both.append(sid)
            log.debug("subject %s: NSRR XML %s used, not %s", sid, annotation[1], ", ".join(annotation[2]))
    if both:
        log.info("%d subject(s) have both an NSRR and a Profusion XML; the NSRR XML is used (e.g. %s)",
                 len(both), ", ".join(both[:5]))
    if pairing.no_id:
        log.warning("%d file(s) whose name has no subject ID (pattern %r) are not used, e.g. %s",
                    len(pairing.no_id), id_pattern, ", ".join(pairing.no_id[:5]))
    return subjects, problems


def find_dreamt_subjects(csv_dir: Path) -> tuple[dict[str, tuple[Path, Path]], dict[str, tuple[str, str]]]:
    """DREAMT: participant ID -> (csv, csv) (one file holds both the signals and the stages), plus {id:
    ('duplicate_files', reason)} for IDs with more than one CSV (not processed), as `find_subjects`."""
    import recording_formats

    files, duplicates = recording_formats.find_dreamt_files(csv_dir)
    return ({sid: (path, path) for sid, path in files.items()},
            {sid: ("duplicate_files", reason) for sid, reason in duplicates.items()})


def resolve_settings(args: argparse.Namespace) -> dict:
    """Settings from the config (--config, else configs/config_cloud.yaml) with flags on top."""
    cfg = load_config(args.config or DEFAULT_CONFIG)
    pre = cfg["preprocessing"]
    settings = {
        "edf_dir": args.edf_dir or pre["edf_dir"],
        "xml_dir": args.xml_dir or pre["xml_dir"],
        "out_dir": args.out_dir or pre["out_dir"],
        "workers": args.workers if args.workers is not None else pre["workers"],
        "resample_method": args.resample_method or pre["resample_method"],
        "ppg_channels": [p.lower() for p in pre["ppg_channels"]],
        "compression": args.compression or pre["compression"],
        "chunk_windows": pre["chunk_windows"],
        "windows_per_subject": args.windows_per_subject or cfg["data"]["windows_per_subject"],
        "id_pattern": pre["id_pattern"],
        "format": args.format or pre["format"],
        "csv_dir": args.csv_dir or pre["csv_dir"],
        **{key: pre[key] for key in DREAMT_KEYS},
    }
    if args.id_pattern is not None:
        try:
            settings["id_pattern"] = compile_id_pattern(args.id_pattern).pattern
        except ValueError as err:
            raise ConfigError(f"--id-pattern: {err}") from None
    if settings["workers"] == 0:
        settings["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return settings


def _settings_of(settings: dict) -> dict:
    """The run's settings as `preprocessing_settings` (what a part file depends on)."""
    keyed = preprocessing_settings(settings["resample_method"], settings["ppg_channels"],
                                   settings["windows_per_subject"])
    if settings["format"] == "dreamt":
        keyed.update(format="dreamt", **{key: settings[key] for key in DREAMT_KEYS})
    return keyed


def _check_setup(settings: dict) -> str | None:
    """A one-line description of bad setup, or None."""
    for key in ("csv_dir",) if settings["format"] == "dreamt" else ("edf_dir", "xml_dir"):
        folder = Path(settings[key])
        if not folder.is_dir():
            return f"{key.replace('_', ' ')} {folder} is not a folder"
        if not os.access(folder, os.R_OK | os.X_OK):
            return f"{key.replace('_', ' ')} {folder} is not readable (permission denied)"
    out = Path(settings["out_dir"])
    if out.exists() and not out.is_dir():
        return f"output folder {out} is a file, not a folder"
    try:
        write_text_atomic(out / ".write_test", "ok")  # creates the folder too
        (out / ".write_test").unlink()
    except OSError as err:
        return f"output folder {out} is not writable: {err.strerror or err}"
    if settings["workers"] < 1:
        return f"--workers must be >= 1, got {settings['workers']}"
    if settings["windows_per_subject"] < 1:
        return f"--windows-per-subject must be >= 1, got {settings['windows_per_subject']}"
    return None


class DiskFullError(OSError):
    """The output disk filled up; `filename` is the file being written. Stops the run (exit status 2)."""


def _is_disk_full(err: BaseException) -> bool:
    """True for a full disk or quota. h5py reports the C library's errno inside its message, and raises
    RuntimeError rather than OSError when the failure comes while it closes a file."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(err, (OSError, RuntimeError)) and ("errno = 28" in str(err) or "No space left" in str(err))


def _bytes_needed(n_parts: int, n_subjects: int, n_windows: int) -> int:
    """Disk space for `n_parts` part files still to write and the HDF5 files of `n_subjects` (uncompressed,
    PPG and ECG at 4 bytes a sample, plus labels, IDs and indices), beside the parts they are built from."""
    signal_bytes = n_windows * SAMPLES_PER_WINDOW * 4
    return n_parts * 2 * signal_bytes + n_subjects * (2 * signal_bytes + n_windows * 40)


def _disk_full_message(path: str | os.PathLike, needed: int) -> str:
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        free = 0
    more_gb = max(0.1, math.ceil((needed - free) / 1e8) / 10)
    return f"disk full while writing {path}: free {more_gb:.1f} GB and run the same command again"


@contextlib.contextmanager
def _naming_a_full_disk(path: str | os.PathLike, needed: int = 0) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError, with the one line the user sees."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if not _is_disk_full(err):
            raise
        path = err.filename or path
        raise DiskFullError(errno.ENOSPC, _disk_full_message(path, needed), str(path)) from None


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporaries left by a killed run (atomic_output names them .<final name>.<random>.tmp)."""
    for tmp in list(out_dir.glob(".*.tmp")) + list((out_dir / PARTS_DIR).glob(".*.tmp")):
        tmp.unlink(missing_ok=True)


def _plan(wanted: list[str], all_subjects: dict, problems: dict, settings: dict,
          overwrite: bool) -> tuple[list[dict], dict[str, list[str]], list[dict]]:
    """Split the wanted IDs into jobs to run, IDs whose part file from an earlier run still holds (same
    settings, same source files, every array intact: {id: its warnings}), and failures known before reading
    anything (missing partner, duplicate files, IDs that clash). A damaged part is logged and rebuilt."""
    parts_dir = Path(settings["out_dir"]) / PARTS_DIR
    jobs, reused, failed = [], {}, []
    for sid in wanted:
        edf, xml = all_subjects[sid]
        if sid in problems:
            kind, reason = problems[sid]
            failed.append({"id": sid, "file": str(edf or xml), "kind": kind, "reason": reason})
        elif edf is None:
            failed.append({"id": sid, "file": str(xml), "kind": "missing_edf", "reason": "XML without an EDF"})
        elif xml is None:
            failed.append({"id": sid, "file": str(edf), "kind": "missing_xml", "reason": "EDF without an XML"})
        else:
            signature = input_signature(_settings_of(settings), edf, xml)
            part = parts_dir / f"{sid}.npz"
            meta = None if overwrite or not part.is_file() else _read_part_meta(part)
            if meta is not None and meta.get("signature") == signature:
                try:
                    read_part(part, settings["windows_per_subject"])
                    reused[sid] = list(meta.get("warnings", []))
                    continue
                except BadPartError as err:
                    log.warning("subject %s: %s; processing it again", sid, err)
            elif part.is_file() and not overwrite and meta is None:
                log.warning("subject %s: part file %s is damaged (unreadable); processing it again", sid, part)
            jobs.append({"id": sid, "edf": str(edf), "xml": str(xml), "part": str(part), "signature": signature,
                         "windows_per_subject": settings["windows_per_subject"],
                         "resample_method": settings["resample_method"],
                         "ppg_channels": settings["ppg_channels"], "format": settings["format"],
                         **{key: settings[key] for key in DREAMT_KEYS}})
    return jobs, reused, failed


def _worker_init(parent_pid: int) -> None:
    """Worker initializer: on Linux, ask the kernel to SIGKILL this worker when the main process dies
    (kill -9 included), so no orphaned worker keeps running or holding memory after the run is gone; and
    leave Ctrl-C to the main process, which stops the workers (a subject in progress is redone next run)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the main process died before the line above took effect
        os._exit(1)


def _process_subject_or_disk_full(job: dict) -> dict:
    """process_subject, with a full disk reported as an OSError that names the part file."""
    try:
        return process_subject(job)
    except OSError as err:
        if _is_disk_full(err):
            raise OSError(errno.ENOSPC, "No space left on device", job["part"]) from None
        raise


def _run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """process_subject over `jobs`, in `workers` processes (in this process when 1); results in job order.
    On an error or Ctrl-C the jobs not yet started are cancelled; parts already written are kept."""
    from tqdm import tqdm

    pool = None
    if workers > 1 and len(jobs) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_worker_init,
                                                      initargs=(os.getpid(),))
    try:
        # pool.map forks the workers now, before tqdm starts its monitor thread
        results = pool.map(_process_subject_or_disk_full, jobs) if pool else map(_process_subject_or_disk_full, jobs)
        done = []
        with tqdm(total=len(jobs), desc="subjects", unit="subject", disable=not jobs) as bar:
            for result in results:  # the bar is closed before any error reaches the user
                done.append(result)
                bar.update(1)
    except BaseException:
        if pool:  # stop now: a subject in progress is lost (its part is never half-written), finished ones stay
            # the worker list must be taken first: shutdown() forgets it (and there is no public one before
            # Python 3.14's terminate_workers)
            workers_alive = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in workers_alive:
                process.terminate()
        raise
    if pool:
        pool.shutdown()
    return done


def _assembly_child(send, out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> None:
    """Runs `assemble` in a child process and sends back ('ok', stats) or (kind, message)."""
    status = 0
    try:
        send.send(("ok", assemble(out_dir, subjects, parts_dir, settings)))
    except KeyboardInterrupt:
        send.send(("interrupted", ""))
    except BadPartError as err:
        send.send(("bad_part", (str(err), err.part)))
    except BaseException as err:
        if _is_disk_full(err):
            send.send(("disk_full", "No space left on device"))
        elif isinstance(err, OSError):
            send.send(("os_error", f"{err.strerror or err}"))
        else:  # a bug: its traceback goes to the main process, which raises it
            import traceback

            send.send(("bug", traceback.format_exc()))
            status = 1
    finally:
        send.close()
        # No interpreter teardown: after a failed write (a full disk) the HDF5 library can crash while it
        # closes its files at exit. Everything this process wrote is closed or removed by now.
        os._exit(status)


def assemble_isolated(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """`assemble` in a forked child process, so that a failed HDF5 write (a full disk) cannot crash this
    process; its outcome comes back as statistics or as the matching exception.

    Raises:
        BadPartError, KeyboardInterrupt, OSError (ENOSPC: a full disk), SetupError (the child was killed);
        RuntimeError for a bug (with its traceback).
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_assembly_child, args=(send, out_dir, subjects, parts_dir, settings))
    child.start()
    send.close()
    try:
        kind, payload = receive.recv()
    except EOFError:
        kind, payload = "died", ""
    finally:
        child.join()
    if kind == "died":
        raise SetupError(f"the process writing the HDF5 files in {out_dir} was killed (exit status "
                         f"{child.exitcode}; out of memory?): run the same command again")
    if kind == "ok":
        return payload
    if kind == "interrupted":
        raise KeyboardInterrupt
    if kind == "bad_part":
        raise BadPartError(*payload)
    if kind == "disk_full":
        raise OSError(errno.ENOSPC, payload, str(out_dir / PPG_FILE))
    if kind == "os_error":
        raise OSError(f"writing the HDF5 files in {out_dir} failed: {payload}")
    raise RuntimeError(f"assembly failed: {payload}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (preprocessing section and data.windows_per_subject); "
                                         "default: the defaults of configs/config_cloud.yaml")
    parser.add_argument("--edf-dir", help="EDF folder (default ./mesa-commercial-use/polysomnography/edfs)")
    parser.add_argument("--xml-dir", help="XML folder (default .../polysomnography/annotations-events-nsrr)")
    parser.add_argument("--out-dir", help="output folder (default ./mesa-x)")
    parser.add_argument("--format", choices=("edf", "dreamt"),
                        help="edf: MESA EDF + NSRR XML (default); dreamt: one DREAMT CSV per participant in --csv-dir")
    parser.add_argument("--csv-dir", help="--format dreamt: the folder of DREAMT CSVs (e.g. data_64Hz)")
    parser.add_argument("--workers", type=int, help="processes (default: preprocessing.workers; 0 = all cores)")
    parser.add_argument("--subjects", help="only these IDs, comma-separated (e.g. 0001,0002)")
    parser.add_argument("--id-pattern", help="regex with one group around the subject ID, searched in file "
                                             "names, any case (default: preprocessing.id_pattern, MESA's "
                                             "'mesa[-_]?sleep[-_]?(\\d+)')")
    parser.add_argument("--limit", type=int, help="only the first N subject IDs (sorted)")
    parser.add_argument("--overwrite", action="store_true", help="redo every subject, ignoring earlier results")
    parser.add_argument("--keep-parts", action="store_true", help="keep the per-subject part files after success")
    parser.add_argument("--windows-per-subject", type=int, help="windows per night (default 1200 = 10 h)")
    parser.add_argument("--resample-method", choices=("linear", "polyphase"),
                        help="linear (the reference) or polyphase (default: preprocessing.resample_method, linear)")
    parser.add_argument("--compression", choices=("none", "lzf", "gzip"),
                        help="HDF5 compression (default: preprocessing.compression, none: fastest reads)")
    return parser.parse_args(argv)


def _read_manifest(path: Path) -> dict | None:
    """The manifest of the last finished run, or None (absent, or damaged: then it is ignored, with a log line)."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring damaged %s (%s)", path, err)
        return None
    return manifest if isinstance(manifest, dict) else None


def run(args: argparse.Namespace) -> int:
    """The whole extraction; bad setup raises SetupError, a full disk DiskFullError."""
    t_start = time.perf_counter()
    try:
        settings = resolve_settings(args)
    except ConfigError as err:
        raise SetupError(str(err)) from None
    problem = _check_setup(settings)
    if problem:
        raise SetupError(problem)
    out_dir, parts_dir = Path(settings["out_dir"]), Path(settings["out_dir"]) / PARTS_DIR
    edf_dir, xml_dir = Path(settings["edf_dir"]), Path(settings["xml_dir"])
    setup_logging(out_dir / "logs" / "processing.log")

    dreamt = settings["format"] == "dreamt"
    try:
        if dreamt:
            all_subjects, problems = find_dreamt_subjects(Path(settings["csv_dir"]))
        else:
            all_subjects, problems = find_subjects(edf_dir, xml_dir, settings["id_pattern"])
    except OSError as err:
        raise SetupError(f"cannot list {err.filename or edf_dir}: {err.strerror or err}") from None
    wanted = sorted(all_subjects)
    if args.subjects:
        requested = sorted({s.strip() for s in args.subjects.split(",") if s.strip()})
        unknown = [s for s in requested if s not in all_subjects]
        if unknown:
            raise SetupError(f"--subjects: no EDF or XML file for {', '.join(unknown)}")
        wanted = requested
    if args.limit is not None:
        wanted = wanted[:max(args.limit, 0)]
    if not any(all_subjects[s][0] and all_subjects[s][1] for s in wanted):
        where = f"CSV files in {settings['csv_dir']}" if dreamt else f"EDF/XML pairs in {edf_dir} and {xml_dir}"
        raise SetupError(f"no {where} to process")

    sources = {sid: [file_signature(all_subjects[sid][0]), file_signature(all_subjects[sid][1])]
               for sid in wanted}
    manifest_key = {"settings": _settings_of(settings), "compression": settings["compression"],
                    "chunk_windows": settings["chunk_windows"], "sources": sources}
    manifest_path = out_dir / MANIFEST_FILE
    outputs_exist = all((out_dir / name).is_file() for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
    previous = None if args.overwrite or not outputs_exist else _read_manifest(manifest_path)
    if previous is not None and previous.get("key") == manifest_key:
        n_failed = len(previous.get("failed", []))
        print(f"up to date: {out_dir} already holds {len(previous.get('subjects', []))} subjects "
              f"({n_failed} failed earlier; see {FAILED_FILE}); use --overwrite to redo")
        return EXIT_FAILED if n_failed else EXIT_OK
    manifest_path.unlink(missing_ok=True)  # outputs are about to change: the old manifest no longer holds
    _remove_stale_temporaries(out_dir)

    n_windows = settings["windows_per_subject"]
    results: list[dict] = []
    for attempt in range(2):  # a part damaged after it was checked is rebuilt once, then assembly retried
        jobs, reused, failed = _plan(wanted, all_subjects, problems, settings, args.overwrite and attempt == 0)
        if attempt == 0:
            for item in failed:
                log.warning("subject %s skipped (%s): %s", item["id"], item["kind"], item["reason"])
        log.info("%d subjects: %d to process, %d reused from %s, %d without a usable pair; %d worker(s)",
                 len(wanted), len(jobs), len(reused), parts_dir, len(failed), settings["workers"])
        n_ok_max = len(jobs) + len(reused)
        with _naming_a_full_disk(parts_dir, _bytes_needed(len(jobs), n_ok_max, n_windows)):
            results = _run_jobs(jobs, settings["workers"])
        warnings = dict(reused)
        ok = sorted(reused)
        for result in results:
            if result["ok"]:
                ok.append(result["id"])
                warnings[result["id"]] = result["warnings"]
            else:
                log.warning("subject %s skipped (%s): %s", result["id"], result["kind"], result["reason"])
                failed.append({"id": result["id"], "file": result["file"], "kind": result["kind"],
                               "reason": result["reason"]})
        ok.sort()
        failed.sort(key=lambda item: item["id"])
        warning_list = [{"id": sid, "file": str(all_subjects[sid][0]), "warning": text}
                        for sid in ok for text in warnings.get(sid, [])]
        with _naming_a_full_disk(out_dir / FAILED_FILE, _bytes_needed(0, len(ok), n_windows)):
            write_text_atomic(out_dir / FAILED_FILE, json.dumps(failed, indent=2) + "\n")
            write_text_atomic(out_dir / WARNINGS_FILE, json.dumps(warning_list, indent=2) + "\n")
        if not ok:
            log.error("no subject could be processed; no HDF5 written (any HDF5 files in %s are from an earlier "
                      "run)", out_dir)
            break
        log.info("assembling %d subjects into %s", len(ok), out_dir)
        try:
            with _naming_a_full_disk(out_dir / PPG_FILE, _bytes_needed(0, len(ok), n_windows)):
                stats = assemble_isolated(out_dir, ok, parts_dir, settings)
        except BadPartError as err:
            if attempt == 1:
                raise
            log.warning("%s; rebuilding it", err)
            Path(err.part).unlink(missing_ok=True)  # the next pass processes that subject again
            continue
        stats["failed_subjects"] = len(failed)
        stats["subjects_with_warnings"] = len({w["id"] for w in warning_list})
        manifest = {"key": manifest_key, "subjects": ok, "failed": [f["id"] for f in failed]}
        with _naming_a_full_disk(out_dir / MANIFEST_FILE):
            write_stats(out_dir, stats)
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
        if not args.keep_parts:
            for sid in ok:
                (parts_dir / f"{sid}.npz").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                parts_dir.rmdir()
        break

    seconds = time.perf_counter() - t_start
    if results:
        log.info("preprocessing took %.2f s per subject (per worker)", np.mean([r["seconds"] for r in results]))
    by_kind = Counter(item["kind"] for item in failed)
    n_warned = len({w["id"] for w in warning_list})
    print(f"done in {seconds:.1f} s: {len(ok)} subjects ok ({len(reused)} reused), {len(failed)} failed"
          + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())) + f"; see {out_dir / FAILED_FILE})"
             if failed else "")
          + (f"; {n_warned} with warnings (see {out_dir / WARNINGS_FILE})" if n_warned else ""))
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 every subject done, 1 some subjects failed, 2 bad setup or a full disk, 130 Ctrl-C."""
    args = parse_args(argv)
    try:
        return run(args)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETUP
    except DiskFullError as err:
        print(f"error: {err.strerror}", file=sys.stderr)
        return EXIT_SETUP
    except BadPartError as err:  # damaged again right after it was rebuilt: the disk itself is suspect
        Path(err.part).unlink(missing_ok=True)
        print(f"error: {err} again after it was rebuilt (removed; check the disk, then run the same command "
              "again)", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:
        if not _is_disk_full(err):
            raise
        print(f"error: {_disk_full_message(err.filename or args.out_dir or '.', 0)}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted: finished subjects are kept; run the same command again to go on from there",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # The filters copy ~80-MB arrays many times per night; reusing freed memory instead of faulting in fresh
    # pages saves ~12% per subject here. Forked workers inherit the setting.
    keep_freed_memory()
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is dropped, not a traceback
    # recording_formats imports this module by name: without this it would load a second copy, whose
    # BadRecordingError the `except` clauses here would not catch (a bad DREAMT file then looked unexpected)
    sys.modules.setdefault("extract_mesa_data", sys.modules[__name__])
    sys.exit(main())
