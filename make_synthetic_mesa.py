"""Write a synthetic cohort laid out exactly like the NSRR MESA download, with physiology a model can learn.

Nobody can share MESA, so every script of this repository is developed and tested on this cohort. For each
subject it writes

- `<out>/polysomnography/edfs/mesa-sleep-XXXX.edf`: a real EDF (edfio, 1-s data records) with MESA's channel
  names and rates: EKG, EEG1 and Pleth at 256 Hz, Flow, Thor, Abdo and Pos at 32 Hz, SpO2 and HR at 1 Hz
  (subjects drawn "without ECG" have no EKG channel); `--full-montage` adds the rest of MESA's channels
  (EOG-L/R, EMG, EEG2/3, Pres, Snore, Leg, Therm, OxStatus, DHR) in MESA's order;
- `<out>/polysomnography/annotations-events-nsrr/mesa-sleep-XXXX-nsrr.xml`: NSRR annotations (root
  `PSGAnnotation`, `EpochLength` 30, `ScoredEvents`): `Recording Start Time` first, 30-s stage runs
  (`Stages|Stages`, every concept including Stage 4, Movement and Unscored across a cohort) interleaved in time
  order with arousals, hypopneas and SpO2 desaturations.

Other NSRR-shaped cohorts: `--name-format 'cfs-visit5-{id}' --ids 800002,800010` names the files after another
cohort, and `--xml-format profusion|both` writes Compumedics Profusion XML (root `CMPStudyConfig`, one
`<SleepStage>` code per 30-s epoch) to `polysomnography/annotations-events-profusion/<stem>-profusion.xml`, the
same scoring as the NSRR XML. `--format dreamt` writes a DREAMT-shaped cohort instead: one CSV per night,
`<out>/data_64Hz/S002_whole_df.csv`, 64 rows per second with DREAMT's columns (TIMESTAMP, BVP, ACC_X/Y/Z, TEMP,
EDA, HR, IBI, Sleep_Stage P/W/N1/N2/N3/R/Missing, and the apnea/hypopnea flags), from the same physiology.

Physiology: a hypnogram with sleep-onset latency, ~90-min NREM/REM cycles, deep sleep early, REM
lengthening toward morning and brief awakenings. Stage sets the heart-rate level, its respiratory (HF) and
low-frequency (LF) modulation, beat-to-beat irregularity, breathing rate/regularity and pulse amplitude, all
smoothed over ~1 min so nothing changes exactly at an epoch boundary. Arousals and phasic REM bring HR surges
and pulse-amplitude drops; wake brings movement artefacts. Subjects differ in resting HR (50-80 bpm),
amplitude, noise and how strongly their stages show, so the stage must be learned and cannot be read off one
feature; the scorer also places a third of stage boundaries one epoch early or late. PPG pulses and the EKG
are synthesised from the same beat times (phase-based, vectorised, in chunks: a 10-h subject takes a few
seconds and under 0.5 GB). Nights default to 8.5-11.5 h; a night shorter than 8 h (e.g. `--hours 0.5` for
tests) holds a time-compressed hypnogram, so it still contains every stage.

IDs are real MESA commercial-use IDs (data/mesa_commercial_use_ids.txt); a `--test-fraction` share comes
from the SleepPPG-Net test list so the fixed test split has members. `--ids` gives them explicitly, kept as
written (leading zeros, letters, any length). Every subject is seeded from (seed, ID): the same seed gives
byte-identical files whatever the number of workers. Existing subjects (all files present) are skipped unless
--overwrite; each file is written under a temporary name and renamed.

Python API: `make_cohort(out_root, n_subjects, hours=None, seed=0, ..., name_format=, xml_format=, fmt=) -> [ids]`,
`write_subject(out_root, subject_id, hours, seed, with_ecg=True, fs_ppg=256, ppg_label="Pleth", ...)
-> (edf_path, xml_path)`, `write_dreamt_subject(out_root, subject_id, hours, seed) -> csv_path`,
`simulate_hypnogram(rng, n_epochs) -> NSRR stage codes`.

Usage: python make_synthetic_mesa.py --out ./demo/synthetic-mesa --n-subjects 40 [--hours 0.5] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
import math
import re
import sys
import time
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from sleepppg.cli import HelpFormatter, non_negative_int, positive_int, positive_number, setup_logging
from sleepppg.constants import EXIT_INTERRUPTED, EXIT_OK, WINDOW_SECONDS
from sleepppg.ids import mesa_commercial_ids, sleepppg_test_subjects
from sleepppg.runio import atomic_output

log = logging.getLogger("make_synthetic_mesa")

# ----------------------------------------------------------------------------------------------------------
# Constants

EDF_SUBDIR = Path("polysomnography") / "edfs"
XML_SUBDIR = Path("polysomnography") / "annotations-events-nsrr"
PROFUSION_SUBDIR = Path("polysomnography") / "annotations-events-profusion"  # NSRR's folder for Profusion XML
MESA_NAME_FORMAT = "mesa-sleep-{id}"  # file stem; the XML adds -nsrr.xml / -profusion.xml, as NSRR names them
XML_FORMATS = ("nsrr", "profusion", "both")
FORMATS = ("mesa", "dreamt")  # EDF + XML in NSRR's layout, or DREAMT's one CSV per night

# DREAMT (wrist-worn Empatica E4 with PSG labels): data_64Hz/<id>_whole_df.csv, one row per 1/64 s.
DREAMT_SUBDIR = "data_64Hz"
DREAMT_FS = 64  # Hz, rows per second of the 64-Hz files
DREAMT_COLUMNS = ("TIMESTAMP", "BVP", "ACC_X", "ACC_Y", "ACC_Z", "TEMP", "EDA", "HR", "IBI", "Sleep_Stage",
                  "Obstructive_Apnea", "Central_Apnea", "Hypopnea", "Multiple_Events")
DREAMT_EVENT_COLUMNS = ("Obstructive_Apnea", "Central_Apnea", "Hypopnea", "Multiple_Events")
DREAMT_FORMATS = {"TIMESTAMP": "%.6f", "BVP": "%.2f", "ACC_X": "%d", "ACC_Y": "%d", "ACC_Z": "%d", "TEMP": "%.2f",
                  "EDA": "%.6f", "HR": "%.2f", "IBI": "%.6f", "Sleep_Stage": "%s", "Obstructive_Apnea": "%s",
                  "Central_Apnea": "%s", "Hypopnea": "%s", "Multiple_Events": "%s"}
DREAMT_STAGES = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "N3", 5: "R", 6: "W", 9: "Missing"}  # NSRR code -> AASM
MAX_DREAMT_DRAWN = 998  # drawn DREAMT IDs run S002 ... S999
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")  # IDs become part of file names
EDF_START_DATE = datetime.date(1985, 1, 1)  # NSRR de-identified EDFs carry 01.01.85

FS_ECG = 256  # Hz, MESA EKG
FS_EEG = 256  # Hz, MESA EEG1
FS_RESP = 32  # Hz, MESA Flow/Thor/Abdo/Pos
FS_CTRL = 4  # Hz, grid of the slow physiological processes (HR level, breathing phase, amplitudes)
FULL_NIGHT_HOURS = 8.0  # shorter nights get a time-compressed hypnogram (see _simulate_states)
TRANSITION_SIGMA_S = 20  # s, Gaussian smoothing of stage effects (~1-min transitions)
CHUNK_SECONDS = 1800  # 256-Hz signals are synthesised 30 min at a time to bound temporary memory

# Physiological states (what the body does) and the NSRR stage codes a scorer writes for them.
WAKE, N1, N2, N3, REM = range(5)
STATE_CODE = np.array([0, 1, 2, 3, 5], dtype=np.int64)
STAGE_CONCEPTS = {  # NSRR code -> EventConcept
    0: "Wake|0", 1: "Stage 1 sleep|1", 2: "Stage 2 sleep|2", 3: "Stage 3 sleep|3",
    4: "Stage 4 sleep|4", 5: "REM sleep|5", 6: "Movement|6", 9: "Unscored|9",
}

# Stage effects, indexed by state (Wake, N1, N2, N3, REM); N2 is the reference. Each subject scales the
# difference from N2 by its own "stage strength" (HR lowest and most regular in N3; REM close to
# wake and irregular; HF power dominates in N3, LF in REM/wake; breathing slow/regular in N3).
HR_OFFSET_BPM = np.array([9.0, 3.5, 0.0, -3.5, 5.0])
RSA_DEPTH = np.array([0.020, 0.030, 0.040, 0.060, 0.018])  # respiratory HR modulation, fraction of HR
LF_DEPTH = np.array([0.035, 0.025, 0.018, 0.008, 0.040])  # 0.04-0.15 Hz HR modulation, fraction of HR
BEAT_JITTER = np.array([0.020, 0.012, 0.008, 0.004, 0.022])  # white beat-time jitter, fraction of RR
RESP_RATE_OFFSET = np.array([1.5, 0.7, 0.0, -0.8, 1.8])  # breaths/min
RESP_IRREGULARITY = np.array([0.16, 0.10, 0.06, 0.025, 0.20])  # sd of log breathing-rate fluctuations
RESP_DEPTH = np.array([0.85, 0.90, 1.0, 1.15, 0.75])  # relative tidal volume
PULSE_AMPLITUDE = np.array([0.80, 0.92, 1.0, 1.06, 0.84])  # relative PPG pulse amplitude (vasomotor tone)
DELTA_UV = np.array([12.0, 18.0, 28.0, 55.0, 14.0])  # EEG1 0.5-2 Hz amplitude, microvolts
ALPHA_UV = np.array([9.0, 4.0, 2.5, 2.0, 3.5])  # EEG1 8-12 Hz amplitude, microvolts
AROUSALS_PER_HOUR = np.array([0.0, 30.0, 12.0, 4.0, 10.0])  # times the subject's arousability (0.5-1.5)
HYPOPNEA_WEIGHT = np.array([0.0, 1.2, 1.0, 0.3, 1.5])  # relative hypopnea rate by state

EOG_UV = np.array([45.0, 35.0, 8.0, 6.0, 60.0])  # eye movements (rolling in N1, rapid in REM), microvolts
EMG_UV = np.array([20.0, 12.0, 9.0, 8.0, 3.0])  # chin muscle tone (atonia in REM), microvolts

# EDF channels: label -> (rate Hz, unit, physical range). MESA_ORDER is the order of a MESA EDF; the basic
# montage writes the channels the pipeline and the issue need, `full_montage` adds the rest (their rates are
# plausible choices, not taken from MESA's documentation).
MESA_ORDER = ("EKG", "EOG-L", "EOG-R", "EMG", "EEG1", "EEG2", "EEG3", "Pres", "Flow", "Snore", "Thor", "Abdo",
              "Leg", "Therm", "Pos", "Pleth", "OxStatus", "SpO2", "HR", "DHR")
EXTRA_CHANNELS = ("EOG-L", "EOG-R", "EMG", "EEG2", "EEG3", "Pres", "Snore", "Leg", "Therm", "OxStatus", "DHR")
CHANNELS = {
    "EOG-L": (256, "uV", (-500.0, 500.0)),
    "EOG-R": (256, "uV", (-500.0, 500.0)),
    "EMG": (256, "uV", (-250.0, 250.0)),
    "EEG2": (FS_EEG, "uV", (-500.0, 500.0)),
    "EEG3": (FS_EEG, "uV", (-500.0, 500.0)),
    "Pres": (FS_RESP, "cmH2O", (-5.0, 5.0)),
    "Snore": (FS_RESP, "mV", (-3.0, 3.0)),
    "Leg": (FS_RESP, "uV", (-250.0, 250.0)),
    "Therm": (FS_RESP, "mV", (-3.0, 3.0)),
    "OxStatus": (1, "", (0.0, 255.0)),
    "DHR": (1, "bpm", (0.0, 250.0)),
    "EKG": (FS_ECG, "mV", (-5.0, 5.0)),
    "EEG1": (FS_EEG, "uV", (-500.0, 500.0)),
    "Flow": (FS_RESP, "mV", (-3.0, 3.0)),
    "Thor": (FS_RESP, "mV", (-3.0, 3.0)),
    "Abdo": (FS_RESP, "mV", (-3.0, 3.0)),
    "Pos": (FS_RESP, "", (0.0, 5.0)),
    "Pleth": (256, "", (-128.0, 128.0)),
    "SpO2": (1, "%", (0.0, 100.0)),
    "HR": (1, "bpm", (0.0, 250.0)),
}


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def edf_path(out_root: str | Path, subject_id: str, name_format: str = MESA_NAME_FORMAT) -> Path:
    return Path(out_root) / EDF_SUBDIR / f"{name_format.format(id=subject_id)}.edf"


def xml_path(out_root: str | Path, subject_id: str, name_format: str = MESA_NAME_FORMAT,
             dialect: str = "nsrr") -> Path:
    """`<root>/polysomnography/annotations-events-nsrr/<stem>-nsrr.xml`, or the Profusion folder and
    `<stem>-profusion.xml` for dialect 'profusion'."""
    folder = XML_SUBDIR if dialect == "nsrr" else PROFUSION_SUBDIR
    return Path(out_root) / folder / f"{name_format.format(id=subject_id)}-{dialect}.xml"


def xml_dialects(xml_format: str) -> tuple[str, ...]:
    """The annotation dialects an --xml-format writes: 'both' -> ('nsrr', 'profusion')."""
    if xml_format not in XML_FORMATS:
        raise ValueError(f"xml_format must be one of {', '.join(XML_FORMATS)}, got {xml_format!r}")
    return ("nsrr", "profusion") if xml_format == "both" else (xml_format,)


def check_name_format(name_format: str) -> str:
    """Raise ValueError unless `name_format` is a file stem holding `{id}` once (e.g. 'cfs-visit5-{id}')."""
    try:
        stem = name_format.format(id="X")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"name format {name_format!r} is not a format string with only {{id}}: {err}") from None
    if name_format.count("{id}") != 1 or "/" in stem or "\\" in stem or stem in ("", ".", ".."):
        raise ValueError(f"name format {name_format!r} must be a file name holding {{id}} once, "
                         "e.g. 'cfs-visit5-{id}'")
    return name_format


def check_ids(ids: list) -> list[str]:
    """IDs as text, as written (leading zeros, letters); ValueError for an empty, unsafe or repeated ID."""
    out = [str(i) for i in ids]
    bad = [i for i in out if not SAFE_ID.fullmatch(i)]
    if bad:
        raise ValueError(f"IDs may hold only letters, digits, '-' and '_': {bad}")
    repeated = sorted({i for i in out if out.count(i) > 1})
    if repeated:
        raise ValueError(f"IDs given more than once: {repeated}")
    # the pair check and extraction skip IDs that differ only by leading zeros (and digit IDs seed alike)
    from sleepppg.ids import zero_free_id

    groups: dict[str, list[str]] = {}
    for i in out:
        groups.setdefault(zero_free_id(i), []).append(i)
    clashes = [group for group in groups.values() if len(group) > 1]
    if clashes:
        raise ValueError(f"IDs that differ only by leading zeros are the same subject: {clashes}")
    return out


def subject_rng(seed: int, subject_id: str, stream: int = 0) -> np.random.Generator:
    """An RNG that depends only on (seed, subject ID, stream), so subjects are independent of order/workers.
    Digit IDs seed with their number (MESA's files stay as they were); other IDs with a hash of their text."""
    sid = str(subject_id)
    if sid.isascii() and sid.isdigit():
        key = int(sid)
    else:
        key = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), key, int(stream)])


def _smooth(x: np.ndarray, sigma_samples: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, dtype=float), sigma_samples, mode="nearest")


def _stage_curve(table: np.ndarray, states: np.ndarray, strength: float, n_ctrl: int) -> np.ndarray:
    """A stage effect on the FS_CTRL grid: N2 value + strength x (state value - N2 value), smoothed with a
    20-s Gaussian (~1-min transitions, so nothing jumps at an epoch boundary). Smoothed at 1 Hz for speed."""
    per_second = np.repeat(table[N2] + strength * (table[states] - table[N2]), WINDOW_SECONDS)
    smooth = _smooth(per_second, TRANSITION_SIGMA_S)
    return np.interp(np.arange(n_ctrl) / FS_CTRL, np.arange(smooth.size) + 0.5, smooth)


def _band_noise(rng: np.random.Generator, n: int, fs: float, lo: float | None, hi: float) -> np.ndarray:
    """Unit-variance Gaussian noise band-limited to [lo, hi] Hz (lo None: low-pass)."""
    from scipy.signal import butter, sosfilt

    if lo is None:
        sos = butter(2, hi, btype="lowpass", fs=fs, output="sos")
    else:
        sos = butter(2, (lo, hi), btype="bandpass", fs=fs, output="sos")
    x = sosfilt(sos, rng.standard_normal(n + int(20 * fs)))[int(20 * fs):]  # drop the filter's settling
    return x / (x.std() + 1e-12)


def _ou(rng: np.random.Generator, n: int, fs: float, tau_s: float, sd: float) -> np.ndarray:
    """Ornstein-Uhlenbeck (AR(1)) process with time constant tau_s and stationary sd, started stationary."""
    from scipy.signal import lfilter

    a = math.exp(-1.0 / (fs * tau_s))
    w = rng.standard_normal(n) * sd * math.sqrt(1 - a * a)
    w[0] = rng.standard_normal() * sd
    return lfilter([1.0], [1.0, -a], w)


def _events(rng: np.random.Generator, rate_per_s: np.ndarray, fs: float) -> np.ndarray:
    """Onset times (s) of a Poisson process whose rate (events/s) is given on a grid at fs."""
    hits = rng.random(rate_per_s.size) < rate_per_s / fs
    return np.flatnonzero(hits) / fs


def _add_kernels(n: int, fs: float, onsets_s: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Sum of `kernel` (sampled at fs) placed at each onset with its amplitude, on a grid of n samples."""
    from scipy.signal import oaconvolve

    impulses = np.zeros(n)
    np.add.at(impulses, np.minimum((onsets_s * fs).astype(np.int64), n - 1), amps)
    return oaconvolve(impulses, kernel)[:n]


def _surge_kernel(fs: float, rise_s: float, decay_s: float, length_s: float) -> np.ndarray:
    """A rise-then-decay bump with peak 1 (difference-of-exponentials shape)."""
    t = np.arange(int(length_s * fs)) / fs
    k = (1 - np.exp(-t / rise_s)) * np.exp(-t / decay_s)
    return k / k.max()


def _resample(x: np.ndarray, fs_in: int, fs_out: int, first: int = 0, count: int | None = None) -> np.ndarray:
    """`x` (sampled at fs_in from t = 0) linearly interpolated at samples first .. first + count - 1 of an fs_out
    grid (all of it by default: x.size * fs_out // fs_in samples); past the last input sample the value is held.
    The values of np.interp(i / fs_out, k / fs_in, x); when fs_out is a multiple of fs_in, several times faster
    (each input interval is filled in one broadcast step instead of searching for every output sample)."""
    count = x.size * fs_out // fs_in - first if count is None else count
    if fs_out % fs_in:
        return np.interp(np.arange(first, first + count) / fs_out, np.arange(x.size) / fs_in, x)
    factor = fs_out // fs_in
    k0, k1 = first // factor, -(-(first + count) // factor)
    a = x[k0:k1]
    b = x[np.minimum(np.arange(k0 + 1, k1 + 1), x.size - 1)]
    fine = (a[:, None] + (b - a)[:, None] * (np.arange(factor) / factor)).ravel()
    return fine[first - k0 * factor:][:count]


def _lookup(table: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """`table` linearly interpolated at fractional indices `pos`; 0 outside [0, table.size - 1]. (np.interp on
    a uniform grid, without its search.)"""
    inside = (pos >= 0) & (pos <= table.size - 1)
    p = np.where(inside, pos, 0.0)
    k = np.minimum(p.astype(np.int64), table.size - 2)
    a = table[k]
    return np.where(inside, a + (table[k + 1] - a) * (p - k), 0.0)


def _last_onset(onsets: np.ndarray, first: int, count: int) -> np.ndarray:
    """For samples first .. first + count - 1: the index of the last of the sorted integer `onsets` at or
    before each sample (np.searchsorted(onsets, i, side="right") - 1), found by counting onsets per sample."""
    lo, hi = np.searchsorted(onsets, (first, first + count))
    return lo - 1 + np.cumsum(np.bincount(onsets[lo:hi] - first, minlength=count))


# ----------------------------------------------------------------------------------------------------------
# Hypnogram


def _simulate_states(rng: np.random.Generator, n_epochs: int) -> np.ndarray:
    """Physiological state per 30-s epoch (WAKE, N1, N2, N3, REM) for one night.

    Nights shorter than FULL_NIGHT_HOURS are a time-compressed full night (latency, cycles and final wake
    shrink in proportion), so a short test night still holds every stage.
    """
    epm = 60 // WINDOW_SECONDS  # epochs per minute
    scale = min(1.0, n_epochs / (FULL_NIGHT_HOURS * 60 * epm))  # minutes of a full night -> this night
    states = np.full(n_epochs, WAKE, dtype=np.int64)
    # Sleep-onset latency 10-30 min after lights off; lights go off up to 30 min after recording starts.
    onset = int((rng.uniform(10, 30) + rng.uniform(0, 30)) * epm * scale)
    final_wake = int(rng.uniform(15, 75) * epm * scale)
    deep_factor = rng.uniform(0.6, 1.35)  # people differ in slow-wave sleep (age)
    rem_factor = rng.uniform(0.8, 1.25)
    pos, end, cycle = onset, n_epochs - final_wake, 0
    while pos < end:
        length = np.clip(rng.normal(90, 10), 70, 115)  # minutes per NREM/REM cycle
        rem = np.clip(6 + 7.5 * cycle + rng.normal(0, 3), 3, 40) * rem_factor  # REM lengthens toward morning
        if cycle == 0 and rng.random() < 0.2:
            rem = 0.0  # a skipped first REM period is common
        deep = max(0.0, (50 - 16 * cycle) * deep_factor + rng.normal(0, 5))  # N3 mostly in the first third
        nrem = length - rem
        n1 = rng.integers(1, 4) / epm
        n2_before = rng.uniform(8, 20)
        deep = min(deep, max(0.0, nrem - n1 - n2_before - 3))
        n2_after = nrem - n1 - n2_before - deep
        for state, minutes in ((N1, n1), (N2, n2_before), (N3, deep), (N2, n2_after), (REM, rem)):
            k = int(round(minutes * epm * scale)) if minutes > 0 else 0
            k = max(k, 1) if minutes > 0 else 0
            states[pos:min(pos + k, end)] = state
            pos += k
            if pos >= end:
                break
        cycle += 1
    sleep = slice(onset, max(onset, end))
    # Brief N2 interruptions of N3, N1 sprinkled into N2.
    seg = states[sleep]
    seg[(seg == N3) & (rng.random(seg.size) < 0.06)] = N2
    seg[(seg == N2) & (rng.random(seg.size) < 0.02)] = N1
    # Brief awakenings (WASO), each followed by a little N1.
    awakenings = np.flatnonzero(rng.random(seg.size) < rng.uniform(0.008, 0.03))
    lengths = 1 + np.minimum(rng.geometric(0.3, awakenings.size), 20)
    if seg.size > 240 and rng.random() < 0.3:  # one long awakening in the second half of the night
        awakenings = np.r_[awakenings, rng.integers(seg.size // 2, seg.size - 60)]
        lengths = np.r_[lengths, rng.integers(20, 80)]
    lengths = np.maximum(1, np.round(lengths * scale)).astype(np.int64)
    for a, k in zip(awakenings, lengths):
        seg[a:a + k] = WAKE
        seg[a + k:a + k + rng.integers(1, 3)] = N1
    states[sleep] = seg
    return states


def _score_states(rng: np.random.Generator, states: np.ndarray) -> np.ndarray:
    """NSRR stage codes a scorer would write for the states.

    Scorers disagree at transitions (a third of stage boundaries are placed one epoch early or late, so the
    labels are not a perfect function of the physiology), some use R&K Stage 4 for the deepest N3, wake with
    body movement is sometimes 'Movement', and some nights end (or briefly lose signal) as 'Unscored'.
    """
    n = states.size
    seen = states.copy()
    for b in np.flatnonzero(states[1:] != states[:-1]):  # boundary between epochs b and b + 1
        u = rng.random()
        if u < 0.15:
            seen[b] = states[b + 1]
        elif u < 0.3:
            seen[b + 1] = states[b]
    codes = STATE_CODE[seen]
    scale = min(1.0, n / (FULL_NIGHT_HOURS * 3600 / WINDOW_SECONDS))  # short nights: shorter unscored spans
    if rng.random() < 0.4:  # an R&K-style scorer: the middle of N3 runs as Stage 4
        deep = seen == N3
        core = deep.copy()
        core[1:] &= deep[:-1]  # N3 on both sides
        core[:-1] &= deep[1:]
        codes[core & (rng.random(n) < 0.7)] = 4
    sleep_idx = np.flatnonzero(states != WAKE)
    if sleep_idx.size:
        after_onset = np.arange(n) > sleep_idx[0]
        movement = (seen == WAKE) & after_onset & (rng.random(n) < rng.uniform(0.02, 0.15))
        codes[movement] = 6
    if rng.random() < 0.1:  # a short signal-loss gap
        start = int(rng.integers(0, max(1, n - 8)))
        codes[start:start + max(1, int(rng.integers(2, 9) * scale))] = 9
    if rng.random() < 0.5:  # scoring stops before the recording ends
        codes[n - min(n, max(1, int(rng.integers(2, 41) * scale))):] = 9
    return codes


def simulate_hypnogram(rng: np.random.Generator, n_epochs: int) -> np.ndarray:
    """A plausible night of NSRR stage codes (0 wake, 1-4 NREM, 5 REM, 6 movement, 9 unscored).

    Args:
        rng: the random generator (consumed).
        n_epochs: number of 30-s epochs.
    Returns:
        int64 array (n_epochs,) of NSRR stage codes.
    """
    states = _simulate_states(rng, n_epochs)
    return _score_states(rng, states)


def stage_runs(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """Merge consecutive equal epochs: [(code, first_epoch, n_epochs), ...] covering the whole night."""
    codes = np.asarray(codes)
    if codes.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    lengths = np.diff(np.r_[starts, codes.size])
    return [(int(codes[s]), int(s), int(k)) for s, k in zip(starts, lengths)]


# ----------------------------------------------------------------------------------------------------------
# Physiology


def _subject_traits(rng: np.random.Generator) -> dict:
    """Per-subject constants: people differ in resting HR, amplitude, noise and how strongly stages show."""
    return {
        "resting_hr": rng.uniform(50, 80),  # bpm, in N2
        "stage_strength": rng.uniform(0.45, 1.35),
        "rsa_gain": rng.lognormal(0.0, 0.3),
        "resp_rate": rng.uniform(12.5, 16.5),  # breaths/min
        "arousability": rng.uniform(0.5, 1.5),
        "ahi": rng.gamma(1.5, 6.0),  # hypopneas per hour of sleep
        "ppg_amplitude": rng.uniform(12, 40),  # Pleth units
        "ppg_noise": rng.uniform(0.01, 0.06),  # fraction of pulse amplitude
        "ppg_baseline": rng.uniform(0.05, 0.25),  # respiratory baseline modulation, fraction of amplitude
        "ptt_s": rng.uniform(0.18, 0.30),  # R peak to PPG foot
        "dicrotic": rng.uniform(0.25, 0.6),  # relative height of the diastolic wave
        "ecg_amplitude": rng.uniform(0.6, 1.8),  # mV R peak
        "ecg_noise": rng.uniform(0.01, 0.05),  # mV
        "spo2_base": rng.uniform(93.5, 97.5),  # %
        "movement_rate": rng.uniform(0.1, 1.0),  # artefacts per minute of wake (a tenth of it in N1/N2/REM)
        "resp_amplitude": rng.uniform(0.3, 1.0),  # mV
    }


def simulate_physiology(rng: np.random.Generator, states: np.ndarray) -> dict:
    """Beat times and slow physiological processes for one night of epoch states.

    Args:
        rng: subject RNG (consumed).
        states: per-epoch physiological states (WAKE..REM), shape (n_epochs,).
    Returns:
        dict with `traits`, `t_ctrl` (s, FS_CTRL grid), `hr_ctrl` (bpm, the mean HR level without RSA/LF),
        `resp_phase_ctrl` (rad), `resp_depth_ctrl`, `pulse_amp_ctrl` (Pleth units), `states` (the input),
        `beats` (R-peak times, s,
        sorted), `arousals`/`hypopneas`/`desaturations`/`movements` (lists of (start_s, duration_s[, ...])),
        `spo2_1hz` (%).
    """
    tr = _subject_traits(rng)
    s = tr["stage_strength"]
    duration = states.size * WINDOW_SECONDS
    n_c = duration * FS_CTRL
    t_c = np.arange(n_c) / FS_CTRL
    states_c = np.repeat(states, WINDOW_SECONDS * FS_CTRL)
    curve = lambda table: _stage_curve(table, states, s, n_c)  # noqa: E731
    asleep_c = states_c != WAKE

    # Events: arousals (sleep), phasic REM bursts, hypopneas, movement artefacts (wake).
    arousal_rate = AROUSALS_PER_HOUR[states_c] * tr["arousability"] / 3600
    arousal_on = _events(rng, arousal_rate, FS_CTRL)
    arousal_dur = rng.uniform(3, 15, arousal_on.size)
    burst_on = _events(rng, (states_c == REM) * rng.uniform(0.5, 2.0) / 60, FS_CTRL)
    hyp_rate = HYPOPNEA_WEIGHT[states_c] * tr["ahi"] / 3600
    hyp_on = _events(rng, hyp_rate, FS_CTRL)
    hyp_dur = rng.uniform(10, 40, hyp_on.size)
    keep = np.r_[True, np.diff(hyp_on) > 60] if hyp_on.size else np.zeros(0, bool)  # no overlapping events
    hyp_on, hyp_dur = hyp_on[keep], hyp_dur[keep]
    # Most hypopneas end in an arousal.
    hyp_arousal = rng.random(hyp_on.size) < 0.6
    arousal_on = np.r_[arousal_on, hyp_on[hyp_arousal] + hyp_dur[hyp_arousal]]
    arousal_dur = np.r_[arousal_dur, rng.uniform(3, 12, int(hyp_arousal.sum()))]
    order = np.argsort(arousal_on, kind="stable")
    arousal_on, arousal_dur = arousal_on[order], arousal_dur[order]
    ok = arousal_on + arousal_dur < duration
    arousal_on, arousal_dur = arousal_on[ok], arousal_dur[ok]
    awakening_on = np.flatnonzero(np.diff(asleep_c.astype(np.int8)) < 0) / FS_CTRL  # sleep -> wake
    # Body movement mostly in wake, but also now and then in light sleep and REM (position changes).
    move_weight = np.where(asleep_c, np.where(states_c == N3, 0.02, 0.1), 1.0)
    move_on = _events(rng, move_weight * tr["movement_rate"] / 60, FS_CTRL)
    move_dur = rng.uniform(2, 15, move_on.size)

    # Heart-rate level: resting + smoothed stage effect + slow drift + overnight decline + surges.
    hr = tr["resting_hr"] + curve(HR_OFFSET_BPM)
    hr += _ou(rng, n_c, FS_CTRL, tau_s=600, sd=2.5) - rng.uniform(0, 5) * t_c / max(duration, 1)
    surge = _surge_kernel(FS_CTRL, 2.0, 7.0, 40)
    hr += _add_kernels(n_c, FS_CTRL, arousal_on, rng.uniform(6, 20, arousal_on.size) * s ** 0.5
                       * (0.6 + arousal_dur / 15), surge)
    hr += _add_kernels(n_c, FS_CTRL, awakening_on, rng.uniform(8, 20, awakening_on.size), surge)
    hr += _add_kernels(n_c, FS_CTRL, burst_on, rng.uniform(3, 10, burst_on.size),
                       _surge_kernel(FS_CTRL, 1.0, 3.0, 15))
    hr = np.clip(hr, 38, 140)

    # Breathing: rate, regularity and depth by state; hypopneas reduce depth.
    irregular = curve(RESP_IRREGULARITY)
    rate = (tr["resp_rate"] + curve(RESP_RATE_OFFSET)) / 60
    rate = rate * np.exp(irregular * _band_noise(rng, n_c, FS_CTRL, None, 0.08))
    resp_phase = 2 * np.pi * np.cumsum(rate) / FS_CTRL + rng.uniform(0, 2 * np.pi)
    depth = curve(RESP_DEPTH) * (1 + irregular * _band_noise(rng, n_c, FS_CTRL, None, 0.1))
    hyp_box = np.zeros(n_c)
    for on, dur in zip(hyp_on, hyp_dur):
        hyp_box[int(on * FS_CTRL):int((on + dur) * FS_CTRL)] = rng.uniform(0.4, 0.7)
    depth *= 1 - _smooth(hyp_box, 2 * FS_CTRL)

    # Instantaneous HR: level x (1 + RSA + LF), RSA deeper with deeper breathing.
    rsa = curve(RSA_DEPTH) * tr["rsa_gain"] * depth
    lf = curve(LF_DEPTH) * _band_noise(rng, n_c, FS_CTRL, 0.04, 0.15)
    inst_hr = hr * (1 + rsa * np.sin(resp_phase) + lf)
    beat_phase = np.cumsum(inst_hr / 60) / FS_CTRL + rng.uniform(0, 1)
    k = np.arange(math.ceil(beat_phase[0]), math.floor(beat_phase[-1]) + 1)
    beats = np.interp(k, beat_phase, t_c)
    rr = np.diff(beats, prepend=beats[0] - 60 / hr[0])
    jitter = np.interp(beats, t_c, curve(BEAT_JITTER))
    beats = beats + np.clip(jitter * rng.standard_normal(beats.size), -0.15, 0.15) * rr
    beats = np.sort(beats[(beats > 0) & (beats < duration)])

    # Pulse amplitude: vasomotor tone by state, drops with arousals/awakenings/phasic REM, slow drift.
    amp = tr["ppg_amplitude"] * curve(PULSE_AMPLITUDE)
    amp *= np.exp(_ou(rng, n_c, FS_CTRL, tau_s=900, sd=0.12))
    drop_kernel = np.r_[np.zeros(2 * FS_CTRL), _surge_kernel(FS_CTRL, 3.0, 10.0, 45)]
    drop = _add_kernels(n_c, FS_CTRL, arousal_on, rng.uniform(0.15, 0.5, arousal_on.size), drop_kernel)
    drop += _add_kernels(n_c, FS_CTRL, awakening_on, rng.uniform(0.2, 0.5, awakening_on.size), drop_kernel)
    drop += _add_kernels(n_c, FS_CTRL, burst_on, rng.uniform(0.05, 0.2, burst_on.size), drop_kernel)
    amp *= np.clip(1 - drop, 0.2, 1)

    # SpO2 at 1 Hz: baseline with slow noise, desaturations ~20 s after each hypopnea starts.
    n_1 = duration
    spo2 = tr["spo2_base"] + _ou(rng, n_1, 1, tau_s=300, sd=0.5)
    desat_depth = rng.uniform(3, 8, hyp_on.size)
    desat_on = hyp_on + hyp_dur * 0.5 + rng.uniform(10, 20, hyp_on.size)
    desat_kernel = _surge_kernel(1, 8.0, 12.0, 60)
    spo2 -= _add_kernels(n_1, 1, desat_on, desat_depth, desat_kernel)
    spo2 = np.clip(np.round(spo2), 70, 100)
    desaturations = []
    for on, d in zip(desat_on, desat_depth):
        if on + 40 < duration:
            base = float(spo2[int(on)])
            nadir = float(spo2[int(on):int(on) + 40].min())
            if base - nadir >= 3:
                desaturations.append((float(on), 30.0, nadir, base))

    return {
        "traits": tr, "t_ctrl": t_c, "hr_ctrl": hr, "resp_phase_ctrl": resp_phase, "resp_depth_ctrl": depth,
        "pulse_amp_ctrl": amp, "states": states, "beats": beats,
        "arousals": [(float(a), float(d)) for a, d in zip(arousal_on, arousal_dur)],
        "hypopneas": [(float(a), float(d)) for a, d in zip(hyp_on, hyp_dur) if a + d < duration],
        "desaturations": desaturations,
        "movements": [(float(a), float(d)) for a, d in zip(move_on, move_dur) if a + d < duration],
        "spo2_1hz": spo2,
    }


def _pulse_table(dicrotic: float, n: int = 1024) -> np.ndarray:
    """One PPG pulse over a beat's phase [0, 1]: a systolic wave that rises faster than it falls (peak at
    0.18 of the beat) + a diastolic (dicrotic) wave; zero at both feet so consecutive beats join smoothly."""
    ph = np.linspace(0, 1, n)
    x = ph / 0.18
    pulse = x ** 3 * np.exp(3 * (1 - x)) + dicrotic * np.exp(-0.5 * ((ph - 0.5) / 0.1) ** 2)
    pulse -= pulse[0] + (pulse[-1] - pulse[0]) * ph  # zero at both feet -> continuous across beats
    return pulse / pulse.max()


def _ecg_table(fs: int) -> tuple[np.ndarray, np.ndarray]:
    """One heartbeat (P, Q, R, S, T waves; mV for a 1-mV R) on a time grid around the R peak."""
    t = np.arange(int(-0.35 * fs), int(0.75 * fs)) / fs
    waves = ((-0.20, 0.025, 0.12), (-0.03, 0.010, -0.12), (0.0, 0.010, 1.0), (0.03, 0.012, -0.25),
             (0.28, 0.050, 0.30))  # (centre s, width s, height)
    beat = sum(h * np.exp(-0.5 * ((t - c) / w) ** 2) for c, w, h in waves)
    return t, beat


def _movement_artefact(rng: np.random.Generator, movements: list, duration: int, fs: int) -> np.ndarray:
    """Movement artefact on a fs grid: large band-limited bursts plus baseline jumps that decay slowly."""
    n = duration * fs
    env = np.zeros(n)
    steps = np.zeros(n)
    for on, dur in movements:
        i0, i1 = int(on * fs), int((on + dur) * fs)
        env[i0:i1] = rng.uniform(0.5, 2.5)
        steps[i1 - 1] += rng.normal(0, 1.0)
    env = _smooth(env, 0.5 * fs)
    from scipy.signal import lfilter

    a = math.exp(-1 / (20 * fs))  # baseline jumps relax over ~20 s
    baseline = lfilter([1.0], [1.0, -a], steps)
    return env * _band_noise(rng, n, fs, 0.3, 4.0) + baseline


def _synth_ppg(rng, phys: dict, duration: int, fs: int, artefact_32: np.ndarray) -> np.ndarray:
    """PPG at fs (Pleth units) from the pulse-arrival times; phase-based, in chunks.

    Each sample looks up the beat it falls in, its phase within that beat, and the pulse
    template at that phase, scaled by the beat's amplitude; slow parts (respiratory baseline, wander,
    movement artefacts) are built at FS_RESP and interpolated once.
    """
    tr = phys["traits"]
    t_c = phys["t_ctrl"]
    table = _pulse_table(tr["dicrotic"])
    feet = phys["beats"] + tr["ptt_s"]
    beat_amp = np.interp(feet, t_c, phys["pulse_amp_ctrl"]) * (1 + 0.04 * rng.standard_normal(feet.size))
    # Sentinel beats far outside the night with zero amplitude: no pulse before the first/after the last foot.
    feet = np.r_[feet[0] - 1e6, feet, feet[-1] + 1e6]
    beat_amp = np.r_[0.0, beat_amp[:-1], 0.0, 0.0]
    amp_32 = _resample(phys["pulse_amp_ctrl"], FS_CTRL, FS_RESP)
    breathing_c = tr["ppg_baseline"] * np.sin(phys["resp_phase_ctrl"]) * phys["resp_depth_ctrl"]
    wander_c = 0.3 * _band_noise(rng, t_c.size, FS_CTRL, None, 0.05)
    slow_32 = amp_32 * (_resample(breathing_c + wander_c, FS_CTRL, FS_RESP) + 0.8 * artefact_32)
    noise_sd = tr["ppg_noise"] * tr["ppg_amplitude"]
    onsets = np.ceil(feet * fs).astype(np.int64)  # first sample of each beat: feet[j] <= i / fs
    ppg = np.empty(duration * fs)
    chunk = CHUNK_SECONDS * fs
    for i0 in range(0, ppg.size, chunk):
        n = min(chunk, ppg.size - i0)
        t = np.arange(i0, i0 + n) / fs
        j = _last_onset(onsets, i0, n)
        phase = (t - feet[j]) / (feet[j + 1] - feet[j])
        ppg[i0:i0 + n] = (beat_amp[j] * _lookup(table, phase * (table.size - 1))
                          + _resample(slow_32, FS_RESP, fs, i0, n) + noise_sd * rng.standard_normal(n))
    return ppg


def _synth_ecg(rng, phys: dict, duration: int, artefact_32: np.ndarray) -> np.ndarray:
    """EKG at FS_ECG (mV) from the R-peak times: each sample sums the previous and next beat's waveform."""
    tr = phys["traits"]
    t_c = phys["t_ctrl"]
    beats = phys["beats"]
    t_tab, tab = _ecg_table(FS_ECG)
    resp_c = np.sin(phys["resp_phase_ctrl"]) * phys["resp_depth_ctrl"]
    beat_amp = tr["ecg_amplitude"] * (1 + 0.08 * np.interp(beats, t_c, resp_c))  # ECG-derived respiration
    beats = np.r_[-1e6, beats, duration + 1e6]  # zero-amplitude sentinels: every sample has both neighbours
    beat_amp = np.r_[0.0, beat_amp, 0.0]
    slow_32 = 0.08 * _resample(resp_c, FS_CTRL, FS_RESP) + 0.3 * artefact_32  # respiratory wander + movement
    onsets = np.floor(beats * FS_ECG).astype(np.int64) + 1  # first sample after each beat: beats[j] < i / FS_ECG
    ecg = np.empty(duration * FS_ECG)
    chunk = CHUNK_SECONDS * FS_ECG
    for i0 in range(0, ecg.size, chunk):
        n = min(chunk, ecg.size - i0)
        t = np.arange(i0, i0 + n) / FS_ECG
        nxt = _last_onset(onsets, i0, n) + 1  # the first beat at or after each sample
        out = _resample(slow_32, FS_RESP, FS_ECG, i0, n) + tr["ecg_noise"] * rng.standard_normal(n)
        for j in (nxt - 1, nxt):  # the beat before and the beat after each sample
            out += beat_amp[j] * _lookup(tab, (t - beats[j] - t_tab[0]) * FS_ECG)
        ecg[i0:i0 + n] = out
    return ecg


def _synth_eeg(rng, phys: dict, duration: int) -> np.ndarray:
    """EEG1 at FS_EEG (uV): stage-weighted delta and alpha band noise plus broadband noise."""
    fs_low = 64
    s = phys["traits"]["stage_strength"]
    n_c = phys["t_ctrl"].size
    delta_amp = _resample(_stage_curve(DELTA_UV, phys["states"], s, n_c), FS_CTRL, fs_low)
    alpha_amp = _resample(_stage_curve(ALPHA_UV, phys["states"], s, n_c), FS_CTRL, fs_low)
    low = delta_amp * _band_noise(rng, delta_amp.size, fs_low, 0.5, 2.0)
    low += alpha_amp * _band_noise(rng, delta_amp.size, fs_low, 8.0, 12.0)
    eeg = np.empty(duration * FS_EEG)
    chunk = CHUNK_SECONDS * FS_EEG
    for i0 in range(0, eeg.size, chunk):
        n = min(chunk, eeg.size - i0)
        eeg[i0:i0 + n] = _resample(low, fs_low, FS_EEG, i0, n) + 6.0 * rng.standard_normal(n)
    return eeg


def _synth_resp(rng, phys: dict, duration: int, artefact_32: np.ndarray) -> dict:
    """Flow, Thor, Abdo (mV) and Pos at FS_RESP from the breathing phase and depth."""
    tr = phys["traits"]
    phase = _resample(phys["resp_phase_ctrl"], FS_CTRL, FS_RESP)
    depth = _resample(phys["resp_depth_ctrl"], FS_CTRL, FS_RESP) * tr["resp_amplitude"]
    noise = lambda scale: scale * rng.standard_normal(phase.size)  # noqa: E731
    thor = depth * (np.sin(phase) + 0.15 * np.sin(2 * phase)) + 0.2 * artefact_32 + noise(0.02)
    abdo = 0.8 * depth * np.sin(phase - 0.3) + 0.2 * artefact_32 + noise(0.02)
    flow = 1.2 * depth * np.cos(phase) * (1 + 0.2 * np.cos(phase)) + noise(0.03)
    # Body position: changes only with some movements (0 supine ... 3 left, as levels).
    pos = np.zeros(phase.size)
    level = float(rng.integers(0, 4))
    last = 0
    for on, _ in phys["movements"]:
        if rng.random() < 0.15:
            i = int(on * FS_RESP)
            pos[last:i] = level
            level, last = float(rng.integers(0, 4)), i
    pos[last:] = level
    return {"Flow": flow, "Thor": thor, "Abdo": abdo, "Pos": pos}


def _synth_extra(rng, phys: dict, duration: int, artefact_32: np.ndarray, resp: dict, hr_1hz: np.ndarray) -> dict:
    """The rest of MESA's montage (full_montage): EOG, chin EMG, two more EEGs, nasal pressure, snore, leg
    EMG, thermistor, oximeter status and a second HR. Cheap stage-weighted noise; only channel layout and
    file size matter for these."""
    s = phys["traits"]["stage_strength"]
    t_c, states = phys["t_ctrl"], phys["states"]
    fs_low = 64
    t_low = np.arange(duration * fs_low) / fs_low
    t_256 = np.arange(duration * 256) / 256
    t_32 = np.arange(duration * FS_RESP) / FS_RESP
    eye = np.interp(t_low, t_c, _stage_curve(EOG_UV, states, s, t_c.size)) * _band_noise(
        rng, t_low.size, fs_low, 0.2, 3.0)
    eye_256 = np.interp(t_256, t_low, eye)
    out = {
        "EOG-L": eye_256 + 5.0 * rng.standard_normal(t_256.size),
        "EOG-R": -0.9 * eye_256 + 5.0 * rng.standard_normal(t_256.size),
    }
    del eye_256
    tone = np.interp(t_256, t_c, _stage_curve(EMG_UV, states, s, t_c.size))
    tone += 40.0 * np.abs(np.interp(t_256, t_32, artefact_32))  # muscle bursts with movement
    out["EMG"] = tone * _band_noise(rng, t_256.size, 256, 10.0, 100.0)
    del tone
    out["EEG2"] = _synth_eeg(rng, phys, duration)
    out["EEG3"] = _synth_eeg(rng, phys, duration)
    out["Pres"] = 1.5 * resp["Flow"] * np.abs(resp["Flow"]) ** 0.5 + 0.02 * rng.standard_normal(t_32.size)
    out["Snore"] = 0.05 * rng.standard_normal(t_32.size)
    out["Leg"] = 5.0 * rng.standard_normal(t_32.size) + 30.0 * np.abs(artefact_32) * rng.standard_normal(
        t_32.size)
    out["Therm"] = np.roll(_smooth(resp["Flow"], 0.5 * FS_RESP), FS_RESP)  # slower, lagging airflow
    out["OxStatus"] = np.zeros(duration)
    out["DHR"] = hr_1hz.copy()
    return out


# ----------------------------------------------------------------------------------------------------------
# Writers


def _fmt_seconds(x: float) -> str:
    return f"{x:.1f}"


def build_xml(codes: np.ndarray, events: list[tuple[float, str, str, float, str]], duration_s: int,
              start_clock: datetime.time) -> str:
    """NSRR annotation XML text (root PSGAnnotation; stage runs as `Stages|Stages` ScoredEvents).

    Args:
        codes: NSRR stage code per 30-s epoch.
        events: other scored events as (start_s, event_type, event_concept, duration_s, extra_xml).
        duration_s: recording length, s.
        start_clock: the recording's start time of day (matches the EDF header).
    """
    scored = [(float(first * WINDOW_SECONDS), 0, "Stages|Stages", STAGE_CONCEPTS[code],
               float(k * WINDOW_SECONDS), "") for code, first, k in stage_runs(codes)]
    scored += [(start, 1, etype, concept, dur, extra) for start, etype, concept, dur, extra in events]
    scored.sort(key=lambda e: (e[0], e[1]))
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        "<PSGAnnotation>",
        "<SoftwareVersion>Compumedics</SoftwareVersion>",
        f"<EpochLength>{WINDOW_SECONDS}</EpochLength>",
        "<ScoredEvents>",
        "<ScoredEvent>",
        "<EventType/>",
        "<EventConcept>Recording Start Time</EventConcept>",
        "<Start>0</Start>",
        f"<Duration>{_fmt_seconds(duration_s)}</Duration>",
        f"<ClockTime>00.00.00 {start_clock.strftime('%H.%M.%S')}</ClockTime>",
        "</ScoredEvent>",
    ]
    for start, _, etype, concept, dur, extra in scored:
        lines += ["<ScoredEvent>", f"<EventType>{escape(etype)}</EventType>",
                  f"<EventConcept>{escape(concept)}</EventConcept>", f"<Start>{_fmt_seconds(start)}</Start>",
                  f"<Duration>{_fmt_seconds(dur)}</Duration>"]
        if extra:
            lines.append(extra)
        lines.append("</ScoredEvent>")
    lines += ["</ScoredEvents>", "</PSGAnnotation>", ""]
    return "\n".join(lines)


def _other_events(phys: dict) -> list[tuple[float, str, str, float, str]]:
    events = [(a, "Arousals|Arousals", "Arousal|Arousal ()", d, "<SignalLocation>EEG1</SignalLocation>")
              for a, d in phys["arousals"]]
    events += [(a, "Respiratory|Respiratory", "Hypopnea|Hypopnea", d, "<SignalLocation>Flow</SignalLocation>")
               for a, d in phys["hypopneas"]]
    events += [(a, "Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation", d,
                f"<SignalLocation>SpO2</SignalLocation>\n<SpO2Nadir>{nadir:.1f}</SpO2Nadir>\n"
                f"<SpO2Baseline>{base:.1f}</SpO2Baseline>") for a, d, nadir, base in phys["desaturations"]]
    return events


def build_profusion_xml(codes: np.ndarray, phys: dict) -> str:
    """Compumedics Profusion XML text of the same scoring as `build_xml`: root `CMPStudyConfig`,
    `EpochLength` 30, the other events as `ScoredEvent`s (Name, Start, Duration, Input) and one
    `<SleepStage>` integer per 30-s epoch in `<SleepStages>` (the NSRR stage code: 0 Wake, 1-4 NREM, 5 REM,
    6 movement, 9 unscored).

    Args:
        codes: NSRR stage code per 30-s epoch.
        phys: the night's `simulate_physiology` output (arousals, hypopneas, desaturations).
    """
    events = [(a, "Arousal ()", d, "EEG1", "") for a, d in phys["arousals"]]
    events += [(a, "Hypopnea", d, "Flow", "") for a, d in phys["hypopneas"]]
    events += [(a, "SpO2 desaturation", d, "SpO2",
                f"<LowestSpO2>{nadir:.1f}</LowestSpO2>\n<Desaturation>{base - nadir:.1f}</Desaturation>")
               for a, d, nadir, base in phys["desaturations"]]
    events.sort(key=lambda e: e[0])
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="no"?>', "<CMPStudyConfig>",
             f"<EpochLength>{WINDOW_SECONDS}</EpochLength>", "<ScoredEvents>"]
    for start, name, dur, signal, extra in events:
        lines += ["<ScoredEvent>", f"<Name>{escape(name)}</Name>", f"<Start>{_fmt_seconds(start)}</Start>",
                  f"<Duration>{_fmt_seconds(dur)}</Duration>", f"<Input>{signal}</Input>"]
        if extra:
            lines.append(extra)
        lines.append("</ScoredEvent>")
    lines += ["</ScoredEvents>", "<SleepStages>"]
    lines += [f"<SleepStage>{int(code)}</SleepStage>" for code in codes]
    lines += ["</SleepStages>", "</CMPStudyConfig>", ""]
    return "\n".join(lines)


def _edf_signal(data: np.ndarray, channel: str, fs: int, label: str | None = None):
    """An edfio signal with the channel's unit and physical range (data clipped into it)."""
    from edfio import EdfSignal

    _, unit, (lo, hi) = CHANNELS[channel]
    return EdfSignal(np.clip(data, lo, hi, out=data), fs, label=label or channel, physical_dimension=unit,
                     physical_range=(lo, hi))


def write_subject(out_root: str | Path, subject_id: str, hours: float, seed: int, with_ecg: bool = True,
                  fs_ppg: int = 256, ppg_label: str = "Pleth", full_montage: bool = False,
                  name_format: str = MESA_NAME_FORMAT, xml_format: str = "nsrr") -> tuple[Path, Path]:
    """Simulate one night and write its EDF and annotation XML (each atomically).

    Args:
        out_root: cohort root; files go to polysomnography/edfs and polysomnography/annotations-events-nsrr
            (Profusion XML: polysomnography/annotations-events-profusion).
        subject_id: the ID as text (MESA: 4 digits, leading zeros kept; any letters/digits/-/_ otherwise).
        hours: recording length; rounded to whole 30-s epochs (at least one).
        seed: cohort seed; the subject's RNG is seeded from (seed, ID).
        with_ecg: False omits the EKG channel.
        fs_ppg: PPG sampling rate, Hz; must be a whole number (1-s EDF data records).
        ppg_label: the PPG channel's label ("Pleth" in MESA).
        full_montage: also write MESA's other channels (EOG, EMG, EEG2/3, ...: ~2x the file size). The
            basic channels are identical either way (the extra ones use their own random stream).
        name_format: file stem with `{id}` (MESA: 'mesa-sleep-{id}'; CFS: 'cfs-visit5-{id}').
        xml_format: 'nsrr', 'profusion' or 'both' (the same scoring in each).
    Returns:
        (edf_path, xml_path): the NSRR XML's path, or the Profusion XML's when only that is written.
    """
    from edfio import Edf, Recording

    check_name_format(name_format)
    xml_dialects(xml_format)
    if float(fs_ppg) != int(fs_ppg) or fs_ppg <= 0:
        raise ValueError(f"fs_ppg must be a positive whole number of Hz (1-s EDF records), got {fs_ppg}")
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    fs_ppg = int(fs_ppg)
    n_epochs = max(1, int(round(hours * 3600 / WINDOW_SECONDS)))
    duration = n_epochs * WINDOW_SECONDS
    rng = subject_rng(seed, subject_id)
    start_clock = (datetime.datetime(2000, 1, 1, 20, 0) + datetime.timedelta(
        seconds=int(rng.integers(0, 4 * 3600)))).time()  # recordings start between 20:00 and 24:00
    states = _simulate_states(rng, n_epochs)
    codes = _score_states(rng, states)
    phys = simulate_physiology(rng, states)
    artefact_32 = _movement_artefact(rng, phys["movements"], duration, FS_RESP)

    signals = {}  # channel -> EdfSignal (int16 inside, so each float array can go once converted)
    if with_ecg:  # own random stream: the other channels are the same with or without the EKG
        ecg = _synth_ecg(subject_rng(seed, subject_id, 3), phys, duration, artefact_32)
        signals["EKG"] = _edf_signal(ecg, "EKG", FS_ECG)
        del ecg
    signals["EEG1"] = _edf_signal(_synth_eeg(rng, phys, duration), "EEG1", FS_EEG)
    resp = _synth_resp(rng, phys, duration, artefact_32)
    for channel, data in resp.items():
        signals[channel] = _edf_signal(data.copy(), channel, FS_RESP)
    signals["Pleth"] = _edf_signal(_synth_ppg(rng, phys, duration, fs_ppg, artefact_32), "Pleth", fs_ppg,
                                   ppg_label)
    signals["SpO2"] = _edf_signal(phys["spo2_1hz"], "SpO2", 1)
    beats = phys["beats"]
    hr_1hz = np.round(np.interp(np.arange(duration) + 0.5, beats[1:], 60.0 / np.diff(beats)))
    signals["HR"] = _edf_signal(hr_1hz.copy(), "HR", 1)
    if full_montage:
        extra = _synth_extra(subject_rng(seed, subject_id, 2), phys, duration, artefact_32, resp, hr_1hz)
        for channel in EXTRA_CHANNELS:
            signals[channel] = _edf_signal(extra.pop(channel), channel, CHANNELS[channel][0])

    edf = Edf([signals[c] for c in MESA_ORDER if c in signals], recording=Recording(startdate=EDF_START_DATE),
              starttime=start_clock, data_record_duration=1)
    edf_out = edf_path(out_root, subject_id, name_format)
    with atomic_output(edf_out) as tmp:
        edf.write(tmp)
    xml_outs = []
    for dialect in xml_dialects(xml_format):
        xml_outs.append(xml_path(out_root, subject_id, name_format, dialect))
        text = (build_xml(codes, _other_events(phys), duration, start_clock) if dialect == "nsrr"
                else build_profusion_xml(codes, phys))
        with atomic_output(xml_outs[-1]) as tmp:
            tmp.write_text(text)
    return edf_out, xml_outs[0]


# ----------------------------------------------------------------------------------------------------------
# DREAMT-shaped nights (wrist wearable, one CSV per night)


def dreamt_ids(n_subjects: int) -> list[str]:
    """DREAMT-style IDs S002, S003, ... (DREAMT's participants are numbered from S002)."""
    if not 0 < n_subjects <= MAX_DREAMT_DRAWN:
        raise ValueError(f"n_subjects must be 1..{MAX_DREAMT_DRAWN} for drawn DREAMT IDs, got {n_subjects}")
    return [f"S{i:03d}" for i in range(2, 2 + n_subjects)]


def dreamt_path(out_root: str | Path, subject_id: str) -> Path:
    return Path(out_root) / DREAMT_SUBDIR / f"{subject_id}_whole_df.csv"


def simulate_dreamt_night(subject_id: str, hours: float, seed: int) -> dict[str, np.ndarray]:
    """One DREAMT-shaped night at 64 Hz from the same stage-driven physiology as the MESA nights.

    Returns:
        {column: array (T,)} for DREAMT_COLUMNS: TIMESTAMP (s from 0), BVP (PPG, arbitrary units), ACC_X/Y/Z
        (1/64 g, whole numbers in -128..127, gravity plus movement), TEMP (skin, deg C, 4-Hz steps), EDA
        (microsiemens, 4-Hz steps), HR (bpm, 1-Hz steps), IBI (s, the last beat's interval), Sleep_Stage (P for
        the minutes before lights-off, then W, N1, N2, N3, R, and a few Missing stretches), and the
        respiratory-event flags Obstructive_Apnea, Central_Apnea, Hypopnea, Multiple_Events (1.0 inside an
        event, NaN elsewhere).
    """
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    rng = subject_rng(seed, subject_id)
    n_epochs = max(4, int(round(hours * 3600 / WINDOW_SECONDS)))
    duration = n_epochs * WINDOW_SECONDS
    states = _simulate_states(rng, n_epochs)
    n_prep = int(min(rng.integers(4, 11), max(1, n_epochs // 4)))  # 2-5 min of preparation before lights-off
    states[:n_prep] = WAKE
    codes = _score_states(rng, states)
    stage = np.array([DREAMT_STAGES[int(c)] for c in codes], dtype=object)
    stage[:n_prep] = "P"
    for _ in range(int(rng.integers(2, 4))):  # a few stretches where the PSG scoring is missing
        first = int(rng.integers(n_prep, n_epochs))
        stage[first:first + int(rng.integers(1, 5))] = "Missing"
    phys = simulate_physiology(rng, states)
    n = duration * DREAMT_FS
    t = np.arange(n) / DREAMT_FS
    artefact_32 = _movement_artefact(rng, phys["movements"], duration, FS_RESP)
    bvp = _synth_ppg(rng, phys, duration, DREAMT_FS, artefact_32)

    # Wrist accelerometer: gravity in one orientation, turned at some movements, plus movement bursts.
    turn_at = [on for on, _ in phys["movements"] if rng.random() < 0.3]
    edges = np.searchsorted(t, turn_at)
    gravity = rng.normal(size=(len(edges) + 1, 3))
    gravity /= np.linalg.norm(gravity, axis=1, keepdims=True)
    segment = np.searchsorted(edges, np.arange(n), side="right")
    motion = np.repeat(artefact_32, DREAMT_FS // FS_RESP)
    acc = {axis: np.clip(np.round(64 * gravity[segment, k] + 25 * motion * rng.standard_normal(n)
                                  + rng.normal(0, 0.6, n)), -128, 127)
           for k, axis in enumerate(("ACC_X", "ACC_Y", "ACC_Z"))}

    # Skin temperature and electrodermal activity at 4 Hz (E4 rates), held for 16 rows each.
    t_4 = np.arange(duration * 4) / 4
    asleep_4 = np.repeat(states != WAKE, WINDOW_SECONDS * 4).astype(float)
    temp = rng.uniform(32.0, 34.0) + 1.2 * _smooth(asleep_4, 15 * 60 * 4) + _ou(rng, t_4.size, 4, 300, 0.08)
    deep_4 = np.repeat(np.isin(states, (N2, N3)), WINDOW_SECONDS * 4)
    storm_on = _events(rng, deep_4 * 0.02, 4)  # "EDA storms": bursts in N2/N3, ~1 per 50 s
    storms = _add_kernels(t_4.size, 4, storm_on, rng.uniform(0.2, 1.5, storm_on.size), _surge_kernel(4, 1.0, 4.0, 20))
    eda = np.maximum(0.0, rng.lognormal(-1.5, 0.5) + 0.05 * _ou(rng, t_4.size, 4, 600, 1.0) + storms)
    hold_4 = np.arange(n) // (DREAMT_FS // 4)

    beats = phys["beats"]
    rr = np.diff(beats)
    hr_1hz = 60.0 / np.interp(np.arange(duration) + 0.5, beats[1:], rr)
    last_beat = np.clip(np.searchsorted(beats[1:], t, side="right") - 1, 0, rr.size - 1)

    flags = {name: np.zeros(n, dtype=bool) for name in DREAMT_EVENT_COLUMNS}
    for on, dur in phys["hypopneas"]:
        u = rng.random()
        kind = "Obstructive_Apnea" if u < 0.3 else "Central_Apnea" if u < 0.4 else "Hypopnea"
        rows = slice(int(on * DREAMT_FS), int((on + dur) * DREAMT_FS))
        flags[kind][rows] = True
        if rng.random() < 0.1:  # scored as two events at once
            flags["Hypopnea" if kind != "Hypopnea" else "Obstructive_Apnea"][rows] = True
            flags["Multiple_Events"][rows] = True
    columns = {"TIMESTAMP": t, "BVP": bvp, **acc, "TEMP": temp[hold_4], "EDA": eda[hold_4],
               "HR": np.repeat(hr_1hz, DREAMT_FS), "IBI": rr[last_beat],
               "Sleep_Stage": np.repeat(stage, WINDOW_SECONDS * DREAMT_FS)}
    columns.update({name: np.where(flag, 1.0, np.nan) for name, flag in flags.items()})
    return columns


def write_dreamt_subject(out_root: str | Path, subject_id: str, hours: float, seed: int) -> Path:
    """Simulate one night (`simulate_dreamt_night`) and write `<out_root>/data_64Hz/<id>_whole_df.csv`
    atomically, in DREAMT_COLUMNS order with fixed number formats (so a seed gives identical bytes)."""
    columns = simulate_dreamt_night(subject_id, hours, seed)
    out = dreamt_path(out_root, subject_id)
    row_format = ",".join(DREAMT_FORMATS[name] for name in DREAMT_COLUMNS)
    n = columns["TIMESTAMP"].size
    rows_per_chunk = CHUNK_SECONDS * DREAMT_FS
    with atomic_output(out) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(",".join(DREAMT_COLUMNS) + "\n")
        for i0 in range(0, n, rows_per_chunk):
            rows = slice(i0, min(i0 + rows_per_chunk, n))
            cells = []
            for name in DREAMT_COLUMNS:
                values = columns[name][rows]
                if name in DREAMT_EVENT_COLUMNS:  # 1.0 inside an event, empty (NaN) elsewhere, as pandas writes
                    values = np.where(np.isnan(values), "", "1.0")
                elif name.startswith("ACC_"):
                    values = values.astype(np.int64)
                cells.append(values.tolist())
            fh.write("".join(row_format % row + "\n" for row in zip(*cells)))
    return out


# ----------------------------------------------------------------------------------------------------------
# Cohort


def choose_ids(n_subjects: int, seed: int, test_fraction: float) -> list[str]:
    """`n_subjects` commercial-use IDs, a `test_fraction` share from the SleepPPG-Net test list; sorted."""
    commercial = mesa_commercial_ids()
    test_pool = sorted(set(commercial) & set(sleepppg_test_subjects()))
    other_pool = sorted(set(commercial) - set(test_pool))
    if not 0 < n_subjects <= len(commercial):
        raise ValueError(f"n_subjects must be 1..{len(commercial)} (MESA commercial-use IDs), got {n_subjects}")
    n_test = min(len(test_pool), int(round(test_fraction * n_subjects)))
    n_other = n_subjects - n_test
    if n_other > len(other_pool):
        n_other, n_test = len(other_pool), n_subjects - len(other_pool)
    rng = np.random.default_rng([int(seed), 7919])
    picked = list(rng.choice(test_pool, n_test, replace=False)) + list(rng.choice(other_pool, n_other,
                                                                                   replace=False))
    return sorted(str(p) for p in picked)


def _subject_job(job: dict) -> tuple[str, bool]:
    """Worker: write one subject unless all its files exist. Returns (id, written)."""
    sid, out_root = job["id"], job["out_root"]
    if job["format"] == "dreamt":
        if not job["overwrite"] and dreamt_path(out_root, sid).is_file():
            return sid, False
        write_dreamt_subject(out_root, sid, job["hours"], job["seed"])
        return sid, True
    paths = [edf_path(out_root, sid, job["name_format"])] + [
        xml_path(out_root, sid, job["name_format"], d) for d in xml_dialects(job["xml_format"])]
    if not job["overwrite"] and all(path.is_file() for path in paths):
        return sid, False
    write_subject(out_root, sid, job["hours"], job["seed"], with_ecg=job["with_ecg"],
                  full_montage=job["full_montage"], name_format=job["name_format"], xml_format=job["xml_format"])
    log.debug("subject %s written (%.2f h, ECG %s)", sid, job["hours"], job["with_ecg"])
    return sid, True


def make_cohort(out_root: str | Path, n_subjects: int, hours: float | None = None, seed: int = 0,
                min_hours: float = 8.5, max_hours: float = 11.5, no_ecg_fraction: float = 0.1,
                test_fraction: float = 0.3, workers: int = 1, ids: list[str] | None = None,
                overwrite: bool = False, full_montage: bool = False, name_format: str = MESA_NAME_FORMAT,
                xml_format: str = "nsrr", fmt: str = "mesa") -> list[str]:
    """Write a synthetic cohort: MESA-shaped EDF + XML (`fmt` 'mesa'), or DREAMT-shaped CSVs ('dreamt').

    Args:
        out_root: cohort root folder (created).
        n_subjects: number of subjects (ignored when `ids` is given).
        hours: fixed night length for everyone; None draws each night from [min_hours, max_hours].
        seed: cohort seed (IDs, ECG-less subjects, every subject's signals).
        no_ecg_fraction: share of subjects written without the EKG channel.
        test_fraction: share of IDs taken from the SleepPPG-Net test list (MESA IDs only).
        workers: processes; files are identical for any value.
        ids: explicit IDs (text kept as given: '800002', 'S002', '0282') instead of drawing them. Drawn IDs
            are MESA commercial-use IDs, or S002, S003, ... for DREAMT.
        overwrite: rewrite subjects whose files already exist.
        full_montage: write all of MESA's channels, not only the basic montage (see write_subject).
        name_format: EDF/XML file stem with `{id}` (default MESA's 'mesa-sleep-{id}').
        xml_format: 'nsrr', 'profusion' or 'both'.
        fmt: 'mesa' (EDF + XML under polysomnography/) or 'dreamt' (data_64Hz/<id>_whole_df.csv).
    Returns:
        The subject IDs of the cohort (sorted), written or skipped.
    """
    ids, _, _ = _make_cohort_counted(out_root, n_subjects, hours, seed, min_hours, max_hours, no_ecg_fraction,
                                     test_fraction, workers, ids, overwrite, full_montage, name_format,
                                     xml_format, fmt)
    return ids


def _make_cohort_counted(out_root, n_subjects, hours, seed, min_hours, max_hours, no_ecg_fraction,
                         test_fraction, workers, ids, overwrite, full_montage, name_format=MESA_NAME_FORMAT,
                         xml_format="nsrr", fmt="mesa") -> tuple[list[str], int, int]:
    """make_cohort, also returning how many subjects were written and skipped."""
    from tqdm import tqdm

    if not (min_hours > 0 and max_hours >= min_hours):
        raise ValueError(f"need 0 < min_hours <= max_hours, got {min_hours}, {max_hours}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_name_format(name_format)
    xml_dialects(xml_format)
    if ids is None:
        ids = choose_ids(n_subjects, seed, test_fraction) if fmt == "mesa" else dreamt_ids(n_subjects)
    ids = sorted(check_ids(ids))
    rng = np.random.default_rng([int(seed), 104729])
    n_no_ecg = int(round(no_ecg_fraction * len(ids))) if fmt == "mesa" else 0
    no_ecg = set(rng.choice(ids, n_no_ecg, replace=False).tolist()) if n_no_ecg else set()
    jobs = []
    for sid in ids:
        h = hours if hours is not None else float(subject_rng(seed, sid, 1).uniform(min_hours, max_hours))
        jobs.append({"out_root": str(out_root), "id": sid, "hours": h, "seed": seed, "with_ecg": sid not in no_ecg,
                     "full_montage": full_montage, "overwrite": overwrite, "name_format": name_format,
                     "xml_format": xml_format, "format": fmt})
    written = 0
    with tqdm(total=len(jobs), desc="synthetic subjects", unit="subj") as bar:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for _, did in pool.imap_unordered(_subject_job, jobs):
                    written += did
                    bar.update()
        else:
            for job in jobs:
                written += _subject_job(job)[1]
                bar.update()
    skipped = len(jobs) - written
    log.info("cohort %s: %d subjects written, %d skipped (already present)%s", out_root, written, skipped,
             f", {len(no_ecg)} without ECG" if fmt == "mesa" else "")
    return ids, written, skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--out-dir", "--out", dest="out", required=True, metavar="DIR",
                   help="cohort root (MESA: polysomnography/... is created inside; DREAMT: data_64Hz/)")
    p.add_argument("--n-subjects", type=positive_int, help="number of subjects (or --ids)")
    p.add_argument("--subjects", type=positive_int, dest="subjects_deprecated",
                   help="deprecated alias of --n-subjects (a count; extraction's --subjects is a list of IDs)")
    p.add_argument("--ids", help="explicit comma-separated subject IDs, kept as written (e.g. 800002,800010 or "
                                 "S002,S005); default: drawn MESA commercial-use IDs, or S002, S003, ... "
                                 "for --format dreamt")
    p.add_argument("--format", choices=FORMATS, default="mesa",
                   help="mesa: EDF + annotation XML in NSRR's folder layout; dreamt: one 64-Hz CSV per night, "
                        "data_64Hz/<id>_whole_df.csv, as the DREAMT wearable dataset")
    p.add_argument("--name-format", default=MESA_NAME_FORMAT,
                   help="EDF/XML file stem with {id}, e.g. 'cfs-visit5-{id}' (the XML adds -nsrr.xml or "
                        "-profusion.xml)")
    p.add_argument("--xml-format", choices=XML_FORMATS, default="nsrr",
                   help="annotation dialect: NSRR XML (annotations-events-nsrr/), Compumedics Profusion XML "
                        "(annotations-events-profusion/), or both (the same scoring)")
    p.add_argument("--hours", type=positive_number, default=None,
                   help="fixed night length (h) for everyone; unset: each drawn from [--min-hours, --max-hours]")
    p.add_argument("--min-hours", type=positive_number, default=8.5, help="shortest night when --hours is not given")
    p.add_argument("--max-hours", type=positive_number, default=11.5, help="longest night when --hours is not given")
    p.add_argument("--seed", type=non_negative_int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--no-ecg-fraction", type=float, default=0.1, help="share of subjects without EKG (MESA format)")
    p.add_argument("--test-fraction", type=float, default=0.3,
                   help="share of drawn MESA IDs taken from the SleepPPG-Net test list")
    p.add_argument("--workers", type=int, default=1, help="processes (files are identical for any number)")
    p.add_argument("--overwrite", action="store_true", help="rewrite subjects whose files exist")
    p.add_argument("--full-montage", action="store_true",
                   help="write all of MESA's channels (EOG, EMG, EEG2/3, Pres, ...), about twice the file size")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.subjects_deprecated is not None:
        log.warning("--subjects N is deprecated for the generator: use --n-subjects N")
        if args.n_subjects is not None and args.n_subjects != args.subjects_deprecated:
            p.error("--subjects and --n-subjects disagree; give --n-subjects only")
        args.n_subjects = args.subjects_deprecated
    if args.ids is not None:
        args.ids = [i.strip() for i in args.ids.split(",") if i.strip()]
        try:
            check_ids(args.ids)
        except ValueError as err:
            p.error(f"--ids: {err}")
        if not args.ids:
            p.error("--ids: no ID given")
        if args.n_subjects is not None and args.n_subjects != len(args.ids):
            p.error(f"--n-subjects {args.n_subjects} but --ids lists {len(args.ids)} IDs; give one of them")
    elif args.n_subjects is None:
        p.error("give the number of subjects (--n-subjects N) or their IDs (--ids A,B,...)")
    n_ids = len(mesa_commercial_ids())
    if args.ids is None and args.format == "mesa" and args.n_subjects > n_ids:
        p.error(f"--n-subjects must be within 1..{n_ids} (the MESA commercial-use IDs); use --ids for more")
    if args.ids is None and args.format == "dreamt" and args.n_subjects > MAX_DREAMT_DRAWN:
        p.error(f"--n-subjects must be within 1..{MAX_DREAMT_DRAWN} for --format dreamt (S002 ... S999)")
    try:
        check_name_format(args.name_format)
    except ValueError as err:
        p.error(f"--name-format: {err}")
    if not args.min_hours <= args.max_hours:
        p.error("need --min-hours <= --max-hours")
    for name in ("no_ecg_fraction", "test_fraction"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be within [0, 1]")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    t0 = time.perf_counter()
    ids, written, skipped = _make_cohort_counted(
        args.out, args.n_subjects, args.hours, args.seed, args.min_hours, args.max_hours, args.no_ecg_fraction,
        args.test_fraction, args.workers, args.ids, args.overwrite, args.full_montage, args.name_format,
        args.xml_format, args.format)
    kind = "DREAMT-shaped" if args.format == "dreamt" else "MESA-shaped" if args.name_format == MESA_NAME_FORMAT \
        else "NSRR-shaped"
    print(f"synthetic {kind} cohort: {len(ids)} subjects ({written} written, {skipped} skipped) "
          f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
