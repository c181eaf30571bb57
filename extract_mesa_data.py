"""Preprocess MESA polysomnography (EDF + NSRR XML) into the HDF5 windows and labels SleepPPG-Net trains on.

Other NSRR-style cohorts work too: files pair by the subject ID that `preprocessing.id_pattern` (`--id-pattern`,
a regex with one group; MESA's by default) finds in their names, and the annotation of `<stem>.edf` is
`<stem>-nsrr.xml` (NSRR XML) or `<stem>-profusion.xml` (Compumedics Profusion XML; NSRR preferred when both).
IDs that differ only by leading zeros (282, 0282) are all skipped as 'id_clash'.

For every subject with both files: read the PPG (Pleth) and ECG (EKG) channels with mne, filter, resample
to 34.133 Hz (1,024 samples per 30-s epoch), clip at mean +/- 3 SD and z-score (SPEC §4, Kotzen et al. 2023),
cut into 1,200 windows (the first 10 h, zero-padded) and label each 30-s epoch from the XML stage runs
(Wake 0, Light 1, Deep 2, REM 3, -1 unscored or beyond the recording).

Outputs (SPEC §5) in the output folder (default ./mesa-x), rows in sorted subject-ID order:
- mesa_ppg_with_labels.h5: ppg (N_windows, 1024) float32, labels (N_windows,) int64, subject_ids (N_windows,) S4;
- mesa_real_ecg.h5: ecg (N_windows, 1024) float32 (zeros without ECG), has_real_ecg, subject_ids, labels,
  real_ecg_indices;
- mesa_subject_index.h5: subjects/<id>/window_indices with attrs n_windows, has_ecg, n_recorded_windows;
- data_stats.npy/.txt, failed_subjects.json (id, file, kind, reason per skipped subject),
  extract_manifest.json (settings, sources, subjects: says whether a rerun is up to date), logs/processing.log.

How it runs: worker processes preprocess subjects one at a time and each writes `<out>/.parts/<id>.npz`
(temporary name, then rename), so a run killed at any moment resumes without redoing finished subjects. The
main process then streams the parts, in sorted ID order, into pre-sized HDF5 datasets written under temporary
names and renamed at the end. Memory stays at about one subject per process whatever the cohort size.
Bad data (no PPG, unreadable/truncated EDF, missing/malformed XML, no stage events, NaNs, flat PPG, a file
without its partner) is logged, skipped and listed; exit status 1 if any subject failed, 0 if none, 2 on bad
setup (missing folder, unwritable output, no subjects).

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
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np

from sleepppg_common import (CONCEPT_TO_CLASS, ECG_FILE, IGNORE_INDEX, INDEX_FILE, PPG_FILE, SAMPLES_PER_WINDOW,
                             MESA_ID_PATTERN, STAGE_NAMES, TARGET_FS, WINDOW_SECONDS, WINDOWS_PER_SUBJECT,
                             ConfigError, atomic_output, compile_id_pattern, keep_freed_memory, load_config,
                             setup_logging, write_text_atomic)

log = logging.getLogger("extract_mesa_data")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "config_cloud.yaml"
PPG_PATTERNS = ("pleth", "ppg", "bvp")  # the PPG is a label containing one of these (any case), highest rate
FAILED_FILE = "failed_subjects.json"
MANIFEST_FILE = "extract_manifest.json"
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


class BadRecordingError(ValueError):
    """One subject's data cannot be used; `kind` is a short machine-readable reason (e.g. 'no_ppg_channel')."""

    def __init__(self, message: str, kind: str = "bad_recording"):
        super().__init__(message)
        self.kind = kind


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
    """The ECG channel (SPEC §3): an ecg/ekg label with lead II ('ii' or '2') first, then any ecg, then any ekg."""
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
# Signal preprocessing (SPEC §4)


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
    return clip_zscore(resample(x, fs, method))


def preprocess_ecg(signal: np.ndarray, fs: float, method: str = "linear") -> np.ndarray:
    """ECG -> Butterworth band-pass (order 4, 0.5-40 Hz, zero-phase; upper edge capped at 0.99 x Nyquist),
    then the same resample, clip and z-score as `preprocess_ppg`. Returns float32 1-D at 34.133 Hz."""
    from scipy.signal import sosfiltfilt

    x = _check_input(signal, fs, 2 * ECG_BAND_HZ[0] / ECG_MAX_NYQUIST_FRACTION, "ECG")
    return clip_zscore(resample(sosfiltfilt(_ecg_sos(float(fs)), x), fs, method))


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
    seg = int(round(fs * WINDOW_SECONDS))
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
    """The root element of an annotation file; BadRecordingError 'missing_xml' or 'malformed_xml'."""
    try:
        return ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise BadRecordingError(f"XML not found: {xml_path}", kind="missing_xml") from None
    except (ET.ParseError, OSError, UnicodeDecodeError) as err:
        raise BadRecordingError(f"malformed XML {Path(xml_path).name}: {err}", kind="malformed_xml") from None


def xml_to_labels(xml_path: str | os.PathLike, n_windows: int = WINDOWS_PER_SUBJECT) -> np.ndarray:
    """Annotation XML -> one 4-class label per 30-s epoch (Wake 0, Light 1, Deep 2, REM 3, -1 unscored).

    The dialect is read from the root element: `PSGAnnotation` is NSRR XML (`nsrr_labels`), `CMPStudyConfig`
    is Compumedics Profusion XML (`profusion_labels`). Both give the same labels for the same scoring.

    Returns:
        int64 array (n_windows,).
    Raises:
        BadRecordingError: kind 'missing_xml', 'malformed_xml', 'no_stage_events', 'unknown_xml_dialect'
            (a root of neither dialect: no stages are guessed from it) or 'unsupported_epoch_length'.
    """
    root = _parse_xml(xml_path)
    name = Path(xml_path).name
    if root.tag == NSRR_ROOT:
        return nsrr_labels(root, name, n_windows)
    if root.tag == PROFUSION_ROOT:
        return profusion_labels(root, name, n_windows)
    raise BadRecordingError(f"{name}: neither NSRR XML (root <{NSRR_ROOT}>) nor Profusion XML (root "
                            f"<{PROFUSION_ROOT}>): the root element is <{root.tag}>", kind="unknown_xml_dialect")


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
        if not (math.isfinite(start) and math.isfinite(duration)) or duration <= 0:
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
# EDF reading


def _edf_header(edf_path: Path) -> dict:
    """The fixed EDF header fields we need: n_records, labels, samples per record, record duration (s)."""
    try:
        with open(edf_path, "rb") as fh:
            head = fh.read(256)
            n_records = int(head[236:244].decode("ascii").strip())
            record_s = float(head[244:252].decode("ascii").strip())
            n_signals = int(head[252:256].decode("ascii").strip())
            labels = fh.read(n_signals * 16).decode("ascii", errors="replace")
            fh.seek(256 + n_signals * 216)
            samples = fh.read(n_signals * 8).decode("ascii")
        per_record = [int(samples[i * 8:(i + 1) * 8].strip()) for i in range(n_signals)]
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRecordingError(f"unreadable EDF header {edf_path.name}: {err}", kind="unreadable_edf") from None
    return {"n_records": n_records, "record_s": record_s, "n_signals": n_signals,
            "labels": [labels[i * 16:(i + 1) * 16].strip() for i in range(n_signals)],
            "samples_per_record": per_record}


def _check_edf_size(edf_path: Path, header: dict) -> None:
    """Raise BadRecordingError when the file is shorter than its header declares (a truncated download);
    mne would silently read the records that are there."""
    if header["n_records"] < 0:  # -1 = unknown (still being recorded); nothing to compare against
        return
    expected = 256 * (header["n_signals"] + 1) + header["n_records"] * sum(header["samples_per_record"]) * 2
    actual = edf_path.stat().st_size  # 2 bytes per EDF sample
    if actual < expected:
        raise BadRecordingError(f"truncated EDF {edf_path.name}: {actual} bytes, header declares {expected}",
                                kind="truncated_edf")


def _read_channels(edf_path: Path, channels: list[str]) -> list[tuple[np.ndarray, float]]:
    """(data, fs) per channel. mne resamples every included channel to the highest rate among them, so
    only channels sharing one rate are read together (one pass over the file)."""
    import mne

    raw = mne.io.read_raw_edf(edf_path, include=channels, preload=False, verbose="error")
    data = raw.get_data(picks=channels)
    return [(row, float(raw.info["sfreq"])) for row in data]


def read_edf(edf_path: str | os.PathLike, ppg_patterns: tuple[str, ...] | list[str] = PPG_PATTERNS,
             with_ecg: bool = True) -> dict:
    """Read the PPG and (if present and `with_ecg`) ECG channels of one EDF with mne, each at its native rate.

    Returns:
        dict(ppg=float64 1-D, ppg_fs=Hz, ppg_channel=label, ecg=float64 1-D or None, ecg_fs=Hz or None,
        duration_s=PPG duration in s). Values are in mne's units (volts for uV/mV channels).
    Raises:
        BadRecordingError: kind 'missing_edf', 'unreadable_edf', 'truncated_edf' or 'no_ppg_channel'.
    """
    import mne

    edf_path = Path(edf_path)
    if not edf_path.is_file():
        raise BadRecordingError(f"EDF not found: {edf_path}", kind="missing_edf")
    header = _edf_header(edf_path)
    _check_edf_size(edf_path, header)
    try:
        ch_names = mne.io.read_raw_edf(edf_path, preload=False, verbose="error").ch_names
        header_rates = {label: n / header["record_s"] if header["record_s"] > 0 else 0.0
                        for label, n in zip(header["labels"], header["samples_per_record"])}
        rates = [header_rates.get(name, 0.0) for name in ch_names]
        ppg_channel = find_ppg_channel(ch_names, rates, ppg_patterns)
        if ppg_channel is None:
            raise BadRecordingError(f"no PPG channel (labels containing {list(ppg_patterns)}) in {edf_path.name}; "
                                    f"channels: {ch_names}", kind="no_ppg_channel")
        _log_ppg_choice(edf_path, ppg_channel, ch_names, rates, ppg_patterns)
        ecg_channel = find_ecg_channel(ch_names) if with_ecg else None
        per_record = dict(zip(header["labels"], header["samples_per_record"]))
        same_rate = ecg_channel is not None and per_record.get(ppg_channel, -1) == per_record.get(ecg_channel, -2)
        if same_rate:
            (ppg, ppg_fs), (ecg, ecg_fs) = _read_channels(edf_path, [ppg_channel, ecg_channel])
        else:
            ((ppg, ppg_fs),) = _read_channels(edf_path, [ppg_channel])
            ((ecg, ecg_fs),) = _read_channels(edf_path, [ecg_channel]) if ecg_channel else ((None, None),)
    except (ValueError, OSError, RuntimeError, IndexError, KeyError, EOFError, UnicodeDecodeError) as err:
        if isinstance(err, BadRecordingError):
            raise
        raise BadRecordingError(f"unreadable EDF {edf_path.name}: {type(err).__name__}: {err}",
                                kind="unreadable_edf") from None
    return {"ppg": ppg, "ppg_fs": ppg_fs, "ppg_channel": ppg_channel, "ecg": ecg, "ecg_fs": ecg_fs,
            "duration_s": ppg.size / ppg_fs}


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
                       name: str = "", nan_is_gap: bool = False) -> dict:
    """The one preprocessing of a recording, whatever its file format: PPG (and ECG) -> model input.

    Args:
        ppg: 1-D raw PPG at `ppg_fs` Hz. NaN/inf samples: up to 1% are interpolated, more make the recording
            bad, unless `nan_is_gap`, where NaN marks gaps (see `bridge_gaps`): bridged for filtering, their
            epochs zeroed and listed in `gap_epochs`.
        ecg, ecg_fs: optional ECG; one that is flat or mostly NaN is dropped (has_ecg False), with a warning.
        name: the recording's name, for log lines.
    Returns:
        dict(ppg_windows (n_windows, 1024) float32, ecg_windows (n_windows, 1024) float32 or None, has_ecg,
        n_recorded_windows = epochs holding recorded PPG (at most n_windows), gap_epochs = sorted epoch
        indices touched by a gap (empty without gaps), ppg_fs, duration_s = the PPG's length in s).
    Raises:
        BadRecordingError: 'nan_signal', 'no_signal', 'flat_ppg', 'too_short', 'low_sampling_rate'.
    """
    ppg = np.asarray(ppg, dtype=np.float64)
    gap_W = np.zeros(n_windows, dtype=bool)
    if nan_is_gap:
        ppg, gap_W = bridge_gaps(ppg, ppg_fs, n_windows)
    ppg = repair_nonfinite(ppg, "PPG")
    flat = flat_fraction(ppg, ppg_fs)
    if flat > MAX_FLAT_FRACTION:
        raise BadRecordingError(f"flat PPG: {flat:.0%} of 30-s segments are constant", kind="flat_ppg")
    ppg_z = preprocess_ppg(ppg, ppg_fs, method)
    ppg_windows = to_windows(ppg_z, n_windows)
    ppg_windows[gap_W] = 0.0  # gap epochs hold no recorded signal, like the padding
    ecg_windows = None
    if ecg is not None:
        try:
            ecg = repair_nonfinite(np.asarray(ecg, dtype=np.float64), "ECG")
            if flat_fraction(ecg, ecg_fs) > MAX_FLAT_FRACTION:
                raise BadRecordingError("flat ECG", kind="flat_ecg")
            ecg_windows = to_windows(preprocess_ecg(ecg, ecg_fs, method), n_windows)
        except BadRecordingError as err:
            log.warning("%s: ECG not used (%s)", name, err)
    return {
        "ppg_windows": ppg_windows,
        "ecg_windows": ecg_windows,
        "has_ecg": ecg_windows is not None,
        "n_recorded_windows": min(n_windows, math.ceil(ppg_z.size / SAMPLES_PER_WINDOW)),
        "gap_epochs": np.flatnonzero(gap_W).tolist(),
        "ppg_fs": ppg_fs,
        "duration_s": ppg.size / ppg_fs,
    }


def preprocess_recording(edf_path: str | os.PathLike, n_windows: int = WINDOWS_PER_SUBJECT,
                         method: str = "linear", ppg_patterns: tuple[str, ...] | list[str] = PPG_PATTERNS,
                         with_ecg: bool = True) -> dict:
    """Read one EDF and turn it into model input with `preprocess_signals` (`with_ecg=False`: PPG only, the
    ECG is neither read nor filtered; PPG-only inference uses this).

    Returns:
        `preprocess_signals`'s dict plus ppg_channel (the EDF label used).
    Raises:
        BadRecordingError: reading errors (see `read_edf`) and those of `preprocess_signals`.
    """
    rec = read_edf(edf_path, ppg_patterns, with_ecg=with_ecg)
    out = preprocess_signals(rec["ppg"], rec["ppg_fs"], n_windows, method, rec["ecg"], rec["ecg_fs"],
                             name=Path(edf_path).name)
    out["ppg_channel"] = rec["ppg_channel"]
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


def _read_part_meta(part: Path) -> dict | None:
    try:
        with np.load(part) as npz:
            return json.loads(str(npz["meta"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def process_subject(job: dict) -> dict:
    """Preprocess one subject and write `<parts>/<id>.npz` atomically.

    Args:
        job: dict(id, edf, xml, part, signature, windows_per_subject, resample_method, ppg_channels, format;
            with format 'dreamt' also ppg_column, nominal_fs, max_gap_s, and edf = xml = the participant's CSV).
    Returns:
        dict(id, ok, kind, reason, seconds, has_ecg, n_recorded_windows); bad data gives ok=False with the
        reason instead of raising.
    """
    t0 = time.perf_counter()
    sid = job["id"]
    try:
        n_windows = job["windows_per_subject"]
        if job.get("format") == "dreamt":
            import recording_formats

            labels, rec = recording_formats.preprocess_dreamt(job["edf"], n_windows, job["resample_method"],
                                                              job["ppg_column"], job["nominal_fs"], job["max_gap_s"])
        else:
            labels = xml_to_labels(job["xml"], n_windows)
            rec = preprocess_recording(job["edf"], n_windows, job["resample_method"], tuple(job["ppg_channels"]))
    except BadRecordingError as err:
        return {"id": sid, "ok": False, "kind": err.kind, "reason": str(err),
                "seconds": time.perf_counter() - t0}
    labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
    meta = {"id": sid, "signature": job["signature"], "has_ecg": rec["has_ecg"],
            "n_recorded_windows": rec["n_recorded_windows"], "ppg_channel": rec["ppg_channel"],
            "ppg_fs": rec["ppg_fs"]}
    arrays = {"ppg": rec["ppg_windows"], "labels": labels, "meta": np.array(json.dumps(meta))}
    if rec["has_ecg"]:
        arrays["ecg"] = rec["ecg_windows"]
    part = Path(job["part"])
    with atomic_output(part) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return {"id": sid, "ok": True, "kind": None, "reason": None, "seconds": time.perf_counter() - t0,
            "has_ecg": rec["has_ecg"], "n_recorded_windows": rec["n_recorded_windows"]}


# ----------------------------------------------------------------------------------------------------------
# Assembly: parts -> three HDF5 files


def _compression_args(compression: str) -> dict:
    return {} if compression == "none" else {"compression": compression}


def assemble(out_dir: Path, subjects: list[str], parts_dir: Path, settings: dict) -> dict:
    """Stream the part files of `subjects` (sorted) into the three SPEC §5 HDF5 files; return statistics."""
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
            with np.load(parts_dir / f"{sid}.npz") as part:
                meta = json.loads(str(part["meta"]))
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
    """A message describing bad setup, or None."""
    for key in ("csv_dir",) if settings["format"] == "dreamt" else ("edf_dir", "xml_dir"):
        if not Path(settings[key]).is_dir():
            return f"{key.replace('_', ' ')} {settings[key]} is not a folder"
    out = Path(settings["out_dir"])
    try:
        write_text_atomic(out / ".write_test", "ok")  # creates the folder too
        (out / ".write_test").unlink()
    except OSError as err:
        return f"output folder {out} is not writable: {err}"
    if settings["workers"] < 1:
        return f"--workers must be >= 1, got {settings['workers']}"
    if settings["windows_per_subject"] < 1:
        return f"--windows-per-subject must be >= 1, got {settings['windows_per_subject']}"
    return None


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporaries left by a killed run (atomic_output names them .<final name>.<random>.tmp)."""
    for tmp in list(out_dir.glob(".*.tmp")) + list((out_dir / PARTS_DIR).glob(".*.tmp")):
        tmp.unlink(missing_ok=True)


def _plan(wanted: list[str], all_subjects: dict, problems: dict, settings: dict,
          overwrite: bool) -> tuple[list[dict], list[str], list[dict]]:
    """Split the wanted IDs into jobs to run, IDs whose part file from an earlier run still holds (same
    settings, same source files), and failures known before reading anything (missing partner, duplicate
    files, IDs that clash)."""
    parts_dir = Path(settings["out_dir"]) / PARTS_DIR
    jobs, reused, failed = [], [], []
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
                reused.append(sid)
                continue
            jobs.append({"id": sid, "edf": str(edf), "xml": str(xml), "part": str(part), "signature": signature,
                         "windows_per_subject": settings["windows_per_subject"],
                         "resample_method": settings["resample_method"],
                         "ppg_channels": settings["ppg_channels"], "format": settings["format"],
                         **{key: settings[key] for key in DREAMT_KEYS}})
    return jobs, reused, failed


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: on Linux, ask the kernel to SIGKILL this worker when the main process dies
    (kill -9 included), so no orphaned worker keeps running or holding memory after the run is gone."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1  # from <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the main process died before the line above took effect
        os._exit(1)


def _run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """process_subject over `jobs`, in `workers` processes (in this process when 1); results in job order."""
    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)), initializer=_die_with_parent, initargs=(os.getpid(),)))
            results = pool.map(process_subject, jobs)  # forks the workers now, before tqdm starts its thread
        else:
            results = map(process_subject, jobs)
        return list(tqdm(results, total=len(jobs), desc="subjects", unit="subject", disable=not jobs))


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
    parser.add_argument("--resample-method", choices=("linear", "polyphase"))
    parser.add_argument("--compression", choices=("none", "lzf", "gzip"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        settings = resolve_settings(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = _check_setup(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out_dir, parts_dir = Path(settings["out_dir"]), Path(settings["out_dir"]) / PARTS_DIR
    edf_dir, xml_dir = Path(settings["edf_dir"]), Path(settings["xml_dir"])
    setup_logging(out_dir / "logs" / "processing.log")

    dreamt = settings["format"] == "dreamt"
    if dreamt:
        all_subjects, problems = find_dreamt_subjects(Path(settings["csv_dir"]))
    else:
        all_subjects, problems = find_subjects(edf_dir, xml_dir, settings["id_pattern"])
    wanted = sorted(all_subjects)
    if args.subjects:
        requested = sorted({s.strip() for s in args.subjects.split(",") if s.strip()})
        unknown = [s for s in requested if s not in all_subjects]
        if unknown:
            print(f"error: --subjects: no EDF or XML file for {', '.join(unknown)}", file=sys.stderr)
            return 2
        wanted = requested
    if args.limit is not None:
        wanted = wanted[:max(args.limit, 0)]
    if not any(all_subjects[s][0] and all_subjects[s][1] for s in wanted):
        where = f"CSV files in {settings['csv_dir']}" if dreamt else f"EDF/XML pairs in {edf_dir} and {xml_dir}"
        print(f"error: no {where} to process", file=sys.stderr)
        return 2

    sources = {sid: [file_signature(all_subjects[sid][0]), file_signature(all_subjects[sid][1])]
               for sid in wanted}
    manifest_key = {"settings": _settings_of(settings), "compression": settings["compression"],
                    "chunk_windows": settings["chunk_windows"], "sources": sources}
    manifest_path = out_dir / MANIFEST_FILE
    outputs_exist = all((out_dir / name).is_file() for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
    if not args.overwrite and outputs_exist and manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if previous.get("key") == manifest_key:
            n_failed = len(previous.get("failed", []))
            print(f"up to date: {out_dir} already holds {len(previous['subjects'])} subjects "
                  f"({n_failed} failed earlier; see {FAILED_FILE}); use --overwrite to redo")
            return 1 if n_failed else 0
    manifest_path.unlink(missing_ok=True)  # outputs are about to change: the old manifest no longer holds
    _remove_stale_temporaries(out_dir)

    jobs, reused, failed = _plan(wanted, all_subjects, problems, settings, args.overwrite)
    for item in failed:
        log.warning("subject %s skipped (%s): %s", item["id"], item["kind"], item["reason"])
    log.info("%d subjects: %d to process, %d reused from %s, %d without a usable pair; %d worker(s)",
             len(wanted), len(jobs), len(reused), parts_dir, len(failed), settings["workers"])

    ok = list(reused)
    files_by_id = {job["id"]: job["edf"] for job in jobs}
    results = _run_jobs(jobs, settings["workers"])
    for result in results:
        if result["ok"]:
            ok.append(result["id"])
        else:
            log.warning("subject %s skipped (%s): %s", result["id"], result["kind"], result["reason"])
            failed.append({"id": result["id"], "file": files_by_id[result["id"]], "kind": result["kind"],
                           "reason": result["reason"]})
    ok.sort()
    failed.sort(key=lambda item: item["id"])
    write_text_atomic(out_dir / FAILED_FILE, json.dumps(failed, indent=2) + "\n")

    if ok:
        log.info("assembling %d subjects into %s", len(ok), out_dir)
        stats = assemble(out_dir, ok, parts_dir, settings)
        stats["failed_subjects"] = len(failed)
        write_stats(out_dir, stats)
        manifest = {"key": manifest_key, "subjects": ok, "failed": [f["id"] for f in failed]}
        write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
        if not args.keep_parts:
            for sid in ok:
                (parts_dir / f"{sid}.npz").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                parts_dir.rmdir()
    else:
        log.error("no subject could be processed; no HDF5 written (any HDF5 files in %s are from an earlier run)",
                  out_dir)

    seconds = time.perf_counter() - t_start
    if results:
        log.info("preprocessing took %.2f s per subject (per worker)", np.mean([r["seconds"] for r in results]))
    by_kind = Counter(item["kind"] for item in failed)
    print(f"done in {seconds:.1f} s: {len(ok)} subjects ok ({len(reused)} reused), {len(failed)} failed"
          + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(by_kind.items())) + f"; see {out_dir / FAILED_FILE})"
             if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    # The filters copy ~80-MB arrays many times per night; reusing freed memory instead of faulting in fresh
    # pages saves ~12% per subject here. Forked workers inherit the setting.
    keep_freed_memory()
    sys.exit(main())
