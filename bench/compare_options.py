"""Side by side on a SYNTHETIC cohort: causal vs centred TCN x best checkpoint by validation loss vs kappa.

Trains SleepPPG-Net four times on the same synthetic nights, with the same seed and number of epochs, one run
per combination of `model.tcn_causal` (true = the reference's causal TCN, false = centred) and
`training.select_best_by` (`val_loss` = the reference, `val_kappa`), then prints one table: pooled test
kappa, median per-subject test kappa and the epoch that gave best_model.pth.

Steps (plain commands of this repo, run as subprocesses; each reused when its output is already there):
  1. make_synthetic_mesa.py --subjects N --hours H   -> <workdir>/<size>/cohort/polysomnography/...
  2. extract_mesa_data.py --windows-per-subject W    -> <workdir>/<size>/processed/*.h5
  3. train_ppg_only.py, 4 times                      -> <workdir>/<size>/runs/<combination>/ppg_only_<time>/
(<size> = <N>nights_<H>h_seed<seed>.) The config is configs/config_demo.yaml with the data paths, windows per
night, epochs, batch size, the two options and the output folder replaced (written to
<workdir>/<size>/configs/<combination>.yaml; the shipped file is not changed). Early stopping is off
(patience = epochs), so every run trains the same number of epochs and only the best-epoch choice differs.

The defaults (16 nights of 1 h, 120 windows each, 3 epochs, batch 4) are sized for a shared 2-core machine:
about 10 minutes there when it is busy, a few minutes when idle.
The numbers are on synthetic data, a textbook caricature of sleep physiology: they show that the options
work and how they can differ, NOT how they compare on MESA.

Usage: python bench/compare_options.py [--workdir ./compare_options] [--subjects 16] [--hours 1] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sleepppg.constants import ECG_FILE, EXIT_OK, INDEX_FILE, PPG_FILE, WINDOW_SECONDS  # noqa: E402

log = logging.getLogger("sleepppg.compare_options")

BASE_CONFIG = REPO / "configs" / "config_demo.yaml"
COMBINATIONS = [(causal, select) for causal in (True, False) for select in ("val_loss", "val_kappa")]


def combination_name(tcn_causal: bool, select_best_by: str) -> str:
    return f"{'causal' if tcn_causal else 'centred'}_{select_best_by}"


def run(cmd: list[str], what: str) -> None:
    """Run one step; stop the benchmark with its name and exit status when it fails."""
    log.info("%s: %s", what, " ".join(cmd))
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed with exit status {done.returncode}")
    log.info("%s: %.0f s", what, time.perf_counter() - start)


def write_config(path: Path, processed: Path, save_dir: Path, args: argparse.Namespace, tcn_causal: bool,
                 select_best_by: str) -> None:
    raw = yaml.safe_load(BASE_CONFIG.read_text())
    raw["data"].update(ppg_file=str(processed / PPG_FILE), ecg_file=str(processed / ECG_FILE),
                       index_file=str(processed / INDEX_FILE), windows_per_subject=args.windows,
                       batch_size=args.batch_size, num_workers=0)
    raw["training"].update(num_epochs=args.epochs, seed=args.seed, num_runs=1, patience=args.epochs,
                           select_best_by=select_best_by, segment_windows=0)  # whole (short) nights
    raw["model"]["tcn_causal"] = tcn_causal
    raw["output"].update(save_dir=str(save_dir), save_intermediate=False, save_frequency=max(args.epochs, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def newest_results(save_dir: Path) -> dict | None:
    """test_results.json of the newest finished run under save_dir, or None."""
    found = sorted(save_dir.glob("ppg_only_*/results/test_results.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def format_table(rows: list[dict]) -> str:
    lines = ["SYNTHETIC cohort (not MESA): SleepPPG-Net, same nights, seed and epochs",
             "| model.tcn_causal | training.select_best_by | pooled test kappa | median per-subject test kappa "
             "| best epoch | epochs |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {str(r['tcn_causal']).lower()} | {r['select_best_by']} | {r['kappa']:.3f} | "
                     f"{r['median_kappa']:.3f} | {r['best_epoch']} | {r['epochs']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("compare_options"),
                   help="cohort, HDF5 files and runs (./compare_options is git-ignored)")
    p.add_argument("--subjects", type=int, default=16, help="synthetic nights")
    p.add_argument("--hours", type=float, default=1.0, help="length of every night (h)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of each run (no early stop)")
    p.add_argument("--batch-size", type=int, default=4, help="nights per training step")
    p.add_argument("--seed", type=int, default=42, help="split and training seed, the same for every run")
    p.add_argument("--rerun", action="store_true", help="train again even where a run has results")
    args = p.parse_args(argv)
    if args.subjects < 8 or args.hours <= 0 or args.epochs < 1 or args.batch_size < 1:
        p.error("need --subjects >= 8, --hours > 0, --epochs >= 1 and --batch-size >= 1")
    args.windows = int(args.hours * 3600 // WINDOW_SECONDS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one folder per cohort size, so a rerun with other sizes never reuses nights of another length
    work = args.workdir.resolve() / f"{args.subjects}nights_{args.hours:g}h_seed{args.seed}"
    cohort, processed = work / "cohort", work / "processed"
    py = sys.executable
    if not (processed / INDEX_FILE).is_file():
        run([py, "make_synthetic_mesa.py", "--out", str(cohort), "--subjects", str(args.subjects),
             "--hours", str(args.hours), "--seed", str(args.seed)], "1. synthetic cohort")
        run([py, "extract_mesa_data.py", "--edf-dir", str(cohort / "polysomnography" / "edfs"),
             "--xml-dir", str(cohort / "polysomnography" / "annotations-events-nsrr"), "--out-dir", str(processed),
             "--windows-per-subject", str(args.windows), "--workers", "1"], "2. extract")
    rows = []
    for tcn_causal, select_best_by in COMBINATIONS:
        name = combination_name(tcn_causal, select_best_by)
        save_dir = work / "runs" / f"{name}_batch{args.batch_size}"  # other batch: other runs, never reused
        results = None if args.rerun else newest_results(save_dir)
        if results is None or results["epochs_trained"] != args.epochs:
            cfg_path = work / "configs" / f"{name}.yaml"
            write_config(cfg_path, processed, save_dir, args, tcn_causal, select_best_by)
            run([py, "train_ppg_only.py", "--config", str(cfg_path), "--model", "ppg_only", "--device", "cpu"],
                f"3. train {name}")
            results = newest_results(save_dir)
        rows.append({"tcn_causal": tcn_causal, "select_best_by": select_best_by,
                     "kappa": results["test_kappa_overall"], "median_kappa": results["test_median_kappa"],
                     "best_epoch": results["best_epoch"], "epochs": results["epochs_trained"]})
    print(format_table(rows))
    print(f"({args.subjects} synthetic nights of {args.hours:g} h, {args.windows} windows each; "
          f"{args.epochs} epochs, seed {args.seed}. Synthetic data: not evidence about MESA.)")
    return EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
