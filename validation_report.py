"""Validation report of staged nights against their scoring, after the standardized framework of Menghini et
al. (SLEEP 2021, doi:10.1093/sleep/zsaa170) as yasa implements it: epoch-by-epoch agreement, sleep statistics,
Bland-Altman bias and limits of agreement with the framework's assumption tests, calibration of the stage
probabilities, and (with subject metadata) subgroups by AHI severity, sex, age and BMI.

Inputs: per-night CSVs of inference_ppg_only.py (`<run>/csv/<id>/<id>.csv`, HDF5 mode: they carry the scored
stage `true_idx`); a PATH is a CSV or a folder searched recursively for *.csv; the night ID is the file stem.
Only epochs both staged and scored are compared; differences are predicted - scored. Nights without any scored
epoch are listed and left out. `--metadata` is one row per subject (NSRR harmonized names by default; `nsrrid`
1 matches night 0001).

Outputs in --out-dir (every figure also as a CSV): report.md (one page linking everything), nights.csv (each
input and what became of it), epoch_agreement.csv (per night + `pooled`), confusion_matrix.csv, sleep_stats.csv,
bland_altman.csv, bland_altman_points.csv, calibration.csv, hypnograms.csv, with metadata subgroups.csv and
kappa_by_covariate.csv; figures/*.png. Definitions: docs/validation.md.

Exit status: 0 done; 1 a night could not be read (named; the others are reported); 2 bad setup (no CSV found,
unreadable metadata, a missing covariate column, no night with scored epochs, yasa missing).

The computation is sleepppg.validation_study (training and inference run it too).

Usage: python validation_report.py runs/20250101_120000/csv --out-dir validation --metadata mesa-dataset.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from sleepppg.cli import HelpFormatter, file_argument, positive_int, run_entry_point, setup_logging
from sleepppg.errors import SetupError
from sleepppg.validation import NSRR_COVARIATES, NSRR_ID_COLUMN
from sleepppg.validation_study import validation_report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from sleepppg.validation_stats import BOOTSTRAP_RESAMPLES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="night CSV, or a folder searched for *.csv")
    p.add_argument("--out-dir", required=True, type=Path, help="folder for the report (made if needed)")
    p.add_argument("--metadata", type=file_argument,
                   help="subject metadata CSV, one row per subject (e.g. NSRR's harmonized dataset)")
    p.add_argument("--id-column", help=f"subject ID column of --metadata (default: {NSRR_ID_COLUMN})")
    p.add_argument("--covariates", help=f"comma-separated covariate columns of --metadata (default: "
                                        f"{','.join(NSRR_COVARIATES)})")
    p.add_argument("--synthetic", action="store_true", help="the nights come from the synthetic cohort: the "
                                                            "report says so")
    p.add_argument("--bootstrap", type=positive_int, default=BOOTSTRAP_RESAMPLES, metavar="N",
                   help="bootstrap resamples of the CIs of a statistic whose differences are not normal")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report; returns the exit status (0 done, 1 a night could not be read; SetupError: bad setup)."""
    args = parse_args(argv)
    setup_logging()
    if args.metadata is None and (args.id_column or args.covariates):
        raise SetupError("--id-column and --covariates need --metadata")
    out = args.out_dir.expanduser().resolve()
    for spec in args.paths:
        if Path(spec).expanduser().resolve().is_relative_to(out):
            raise SetupError(f"--out-dir {args.out_dir} holds the input {spec}: the report's files (nights.csv, "
                             "...) could replace a night CSV; give an --out-dir apart from the inputs")
    covariate_names = [c.strip() for c in (args.covariates or ",".join(NSRR_COVARIATES)).split(",") if c.strip()]
    if not covariate_names:
        raise SetupError("--covariates names no column")
    return validation_report(args.paths, args.out_dir, metadata=args.metadata, id_column=args.id_column,
                             covariates=covariate_names, synthetic=args.synthetic, bootstrap=args.bootstrap)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
