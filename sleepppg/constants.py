"""Facts of the data and the processed format, and the exit statuses every script uses.

The processed format (docs/DESIGN.md): 30-s epochs of 1,024 samples at 34.133 Hz, 1,200 per night; the 4-class
stage map (Wake 0, Light 1, Deep 2, REM 3; -1 ignored by loss and metrics); the reference's file names.
"""

from __future__ import annotations

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_DIR / "data"
WINDOW_SECONDS = 30  # one scoring epoch, AASM
SAMPLES_PER_WINDOW = 1024  # 30 s at 34.133 Hz (SleepPPG-Net input rate)
TARGET_FS = SAMPLES_PER_WINDOW / WINDOW_SECONDS  # 34.1333... Hz = 256 Hz x 2/15
WINDOWS_PER_SUBJECT = 1200  # the first 10 h of each night (SleepPPG-Net)
N_CLASSES = 4
PPG_FILE = "mesa_ppg_with_labels.h5"  # processed-file names kept from the reference
ECG_FILE = "mesa_real_ecg.h5"
INDEX_FILE = "mesa_subject_index.h5"
IGNORE_INDEX = -1  # unscored / movement / padding: ignored by loss and metrics
STAGE_NAMES = ("Wake", "Light", "Deep", "REM")
# class -> height in a hypnogram, top to bottom Wake, REM, Light, Deep (the clinical order: REM drawn near Wake,
# the deeper the sleep the lower the line)
HYPNOGRAM_LEVEL = {0: 3, 3: 2, 1: 1, 2: 0}
REM_CLASS = 3

# NSRR EventConcept (the part before '|' is the name, after it the code) -> 4-class label.
# Stage 1/2 are "Light", Stage 3/4 "Deep" (R&K Stage 4 is N3 in AASM terms).
CONCEPT_TO_CLASS = {
    "Wake|0": 0,
    "Stage 1 sleep|1": 1,
    "Stage 2 sleep|2": 1,
    "Stage 3 sleep|3": 2,
    "Stage 4 sleep|4": 2,
    "REM sleep|5": 3,
    "Movement|6": IGNORE_INDEX,
    "Unscored|9": IGNORE_INDEX,
}

MESA_ID_PATTERN = r"mesa[-_]?sleep[-_]?(\d+)"  # file name -> subject ID (the reference's pattern)


# Exit statuses of every script
EXIT_OK = 0  # everything asked for was done
EXIT_FAILED = 1  # some subjects or nights failed (the rest were done), or a verification found problems
EXIT_SETUP = 2  # bad setup or arguments: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it; finished work is kept
SHIPPED_CONFIG = REPO_DIR / "configs" / "config_cloud.yaml"  # the defaults a script uses without --config
