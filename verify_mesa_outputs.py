"""Verify the processed MESA files written by extract_mesa_data.py before training on them.

Input: the output folder (`--base ./mesa-x`) holding mesa_ppg_with_labels.h5, mesa_real_ecg.h5 and
mesa_subject_index.h5. Checks, each printed as PASS/FAIL with its detail:
- the reference's: 1,024 samples per window, sampling_rate x 30 s = 1,024, labels within {-1, 0, 1, 2, 3}
  (distribution printed), the expected windows per subject (1,200 unless the files or --windows-per-subject
  say otherwise), and the share of PPG energy above 8 Hz (reported; the 8-Hz low-pass leaves little there);
- ours: each file is readable HDF5 and holds at least one subject, in sorted ID order; integer labels and a
  scored epoch (a label other than -1) in every night; float32 signals that are finite and within +/-1,000;
  every night z-scored as extraction writes it (over its windows with signal: mean within +/-1, SD 0.25..4,
  so a rescaled or constant night fails); no subject whose PPG is all zeros; file attrs that match the data;
  and the three files consistent with each other (same rows, labels and subject IDs;
  has_real_ecg / real_ecg_indices / ECG attrs agree; rows without ECG are zero; the index covers every row
  exactly once, each subject's entry pointing at one contiguous block of that subject's rows, with matching
  attrs).
A damaged file (truncated, not HDF5, a dataset of the wrong kind) is a failed check naming the file and the
error, never a traceback; a check of the data names the subjects that fail it and what is wrong. Signals are read in
blocks of rows, so a 5-GB PPG array needs only a few MB of memory.
Exit status: 0 when every check passes, 1 naming the failed checks, 2 when the folder does not exist,
130 on Ctrl-C.

The checks are sleepppg.processed's validator of the processed files (the datasets check what they read with it).

Usage: python verify_mesa_outputs.py --base ./mesa-x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sleepppg.cli import one_line, positive_int, run_entry_point
from sleepppg.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP
from sleepppg.processed import verify


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", "--base", dest="base", required=True, metavar="DIR",
                        help="folder with the processed HDF5 files: extraction's --out-dir (e.g. ./mesa-x); "
                             "--base is the reference's name for it")
    parser.add_argument("--windows-per-subject", type=positive_int,
                        help="expected windows per subject (default: the files' attr, else 1200)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = Path(args.base)
    if not base.is_dir():
        print(f"error: --base {base} is not a folder", file=sys.stderr)
        return EXIT_SETUP
    print(f"Verifying {base}")
    try:
        report = verify(base, args.windows_per_subject)
    except KeyboardInterrupt:
        print("interrupted: nothing was written; run the same command again", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n".join(report.lines))
    if report.failed:
        print(f"FAILED {len(report.failed)} check(s): {one_line('; '.join(report.failed), 1000)}")
        return EXIT_FAILED
    print("all checks passed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
