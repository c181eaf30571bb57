"""Stage nights with a trained SleepPPG-Net (PPG only): test-set nights from the processed HDF5 files (with
labels: metrics) or raw recordings (with `--labels`, their scored stages and metrics too), with a validated
per-night cache, CSV files, hypnograms and a sleep report.

Modes
- HDF5 analysis (`inference.only_inference: false`): the valid subjects (exactly `data.windows_per_subject`
  windows) that are on the fixed SleepPPG-Net test list, sorted, shuffled with `inference.random_seed`, the
  first `inference.n_subjects`. Per subject: accuracy and Cohen's kappa over the scored epochs (label != -1);
  summary: mean/std over subjects plus pooled figures (`sleepppg.metrics.compute_metrics`).
- EDF (`inference.only_inference: true`, or `--edf PATH|FOLDER|GLOB`): one EDF, every *.edf and *.bdf of a
  folder, or a glob. Each night is preprocessed by `preprocess_recording` (the training
  preprocessing: `preprocessing.resample_method`, `preprocessing.ppg_channels`) to the model's number of
  30-s windows, and cached in `<inference.cache_root>/<id>/` as `ppg_windows.npy` (float32, n_windows x 1024)
  + `meta.json`. The cache is reused only when meta.json matches the EDF (absolute path, size, mtime_ns) and
  the preprocessing settings (method, channel patterns, n_windows, PREPROCESSING_VERSION);
  a stale, truncated or otherwise unreadable cache is rebuilt, with a log line saying why.

- PPG (`--ppg PATH|FOLDER|GLOB`, or `inference.ppg_file`): recordings of any format sleepppg.formats reads,
  chosen by extension (.csv/.tsv/.txt tables, .npy, .npz, MATLAB .mat, WFDB .hea with its .dat/.mat, .edf/.bdf;
  a folder gives every such file, a .mat beside a .hea being that record's data). `--fs` (`inference.ppg_fs`) is
  the rate of the files that do not state one (a file that states its rate is read at it; a different --fs is
  one warning in its entry); `--column` (`inference.ppg_column`) the table column, array or record signal
  (default: the `preprocessing.ppg_channels` patterns). Only whole 30-s epochs are staged. Time-stamped tables
  are resampled onto a uniform grid; missing stretches longer than `preprocessing.max_gap_s` are gaps: their
  epochs are not staged (CSV pred_name "Gap", empty probabilities; a break in the hypnogram; unscored in the
  sleep report) and listed in result.json (`gap_epochs`, `gaps`).
  Each night's entry also records source_format, ppg_channel (the column used), ppg_fs_found (the rate the
  file states or its stamps show), filled_samples and filled_s (missing samples interpolated). Same cache,
  preprocessing and outputs as EDF mode.

Labels for raw recordings (`--labels PATH`, EDF / PPG mode only; in HDF5 mode the flag is refused, exit 2):
a file or folder of NSRR or Profusion XML or CSV hypnograms (one stage per 30-s epoch: 0-3 / -1 or names such
as W, N1, N2, N3, R, Wake, REM; every accepted spelling in sleepppg.scoring), matched to nights by subject ID
as the pair check does (preprocessing.id_pattern, leading zeros ignored). A night with labels gets
true_idx in its CSV, the scored side of its sleep report and its performance, as in HDF5 mode, and the run its
metrics; a night without (no file, or one that cannot be read: a warning) is staged without them; the log
counts both.

Speed: nights are preprocessed in background threads (`preprocessing.workers`, 0 = one per CPU core) while
the model runs on the nights already prepared (batches of at most `inference.batch_size`), outputs are written
in another thread, and the model is served with its BatchNorm layers folded into the convolutions (same
outputs up to float rounding). glibc is told to keep freed memory for reuse (`keep_freed_memory`), so the
forward pass does not page-fault fresh memory for every layer, which halves its time on CPU. On CUDA the
forward runs under bf16 autocast when `gpu.mixed_precision` is true; probabilities are computed in float32.

Only recorded epochs are staged: a night shorter than the model's span (10 h = 1,200 epochs) gets
predictions for its recorded epochs only (the zero padding is never reported as sleep); a longer night is
staged over its first 10 h and flagged (`truncated: true` and a log line). In HDF5 mode the recorded epochs are
those up to the last window that holds signal or a label (the padding windows are all zeros).

Outputs under `<inference.save_dir or --out>/<run_id>/` (run_id = start time, YYYYmmdd_HHMMSS):
- `result.json` (`result_format` 2; every path in it is absolute, `"paths": "absolute"`): run settings, the
  checkpoint (`checkpoint`: path, sha256, model_kind, checkpoint_format, model_args, epoch; reference_version for a
  reference checkpoint), `nights` (one entry per
  staged night), `failed` (one entry per night that could not be staged: subject_id, file, step = reading /
  staging / writing outputs, kind, reason), `n_nights_staged`, `n_nights_failed`, `interrupted`, and in HDF5
  mode `metrics` (per-subject mean/std and pooled). A night's entry: subject_id, source_file, n_epochs_staged,
  hours_staged, truncated, (EDF) cache_dir, cache_used, ppg_channel, ppg_fs, recording_hours, (HDF5) start_row;
  signal_quality (flat_share, clipped_share, pulse_share, ecg_like_share, pulse_rate_bpm: see sleepppg.quality),
  warnings (texts, also logged and printed); outputs (csv, hypnogram, hypnogram_with_labels: paths or None);
  sleep_report of the predicted stages (yasa's sleep statistics: sleepppg.report); with labels also performance
  (accuracy, kappa, n_epochs_compared = scored epochs the prediction is compared with), sleep_report_scored and
  sleep_report_difference (predicted - scored), both reports over the same epochs.
- `csv/<id>/<id>.csv`: one row per staged epoch, columns
  epoch,time_hours,pred_idx,pred_name,true_idx,true_name,mismatch,p_wake,p_light,p_deep,p_rem,pulse
  (time_hours = epoch start from the recording start; p_* = softmax of the logits, summing to 1; pulse = 1
  where the epoch shows a pulse wave, 0 where not, empty in a gap; true_*/mismatch empty where there is no
  label: unscored epochs, or in EDF / PPG mode a night without labels).
- `graph/<id>/<id>.png`: predicted hypnogram; with labels also `<id>_with_label.png` (scored vs predicted,
  disagreeing epochs shaded orange, REM in red, a legend; accuracy and kappa in the title).
- `inference.log`.
- HDF5 mode: `validation/` (report.md with its tables and figures): the validation report of the staged nights
  (sleepppg.validation_study; with `evaluation.metadata_file` when set, subgroups too). It needs the CSVs
  (inference.save_csv); a report that cannot be made is a warning and does not change the exit status.
The console prints each night's sleep report (with labels: predicted, scored and the difference side by side),
its warnings, the failed nights and where the results are.

Bad data: every failure of one night (a file the reader cannot parse, whatever it raises; no PPG channel; a
flat PPG; a forward pass that fails; outputs that cannot be written) is caught by the night's one error
boundary (sleepppg.staging), logged with the subject and file, listed in `failed` and on the console, and the
other nights are staged and written; the exit status is then 1.
A damaged cache (unreadable or truncated meta.json or .npy, wrong shape or dtype, bytes that do not match
the sha256 in meta.json) is rebuilt with a log line; a cache that cannot be written is skipped with a warning.
A night whose PPG is flat (saturated at the sensor's limit, sensor off, dropout markers) over more than
10% of its length, clipped over more than 2%, or that does not look like a PPG (a pulse in under half of its
epochs: an ECG channel, noise, a flat trace; limits in sleepppg.quality) is staged with a warning in its
entry naming the likely cause. A checkpoint that is missing, not a checkpoint, of another model kind or with
NaN/Inf weights stops the run before anything is written (one line, exit status 2).

Sleep report (sleepppg.report, where its statistics are defined), per night, over the staged epochs
counted from the start of the recording (taken as lights-off): time in bed, total sleep time, sleep
efficiency, sleep onset latency, sleep period, WASO, REM latency, minutes and shares of each stage.

Exit status: 0 every night staged; 1 some nights failed (the others are staged and written; result.json
lists the failures) or result.json could not be written; 2 bad setup (config, checkpoint, device, no EDF found,
data files, an output folder that cannot be made): nothing is written; 130 Ctrl-C: the nights already staged
keep their outputs and result.json says `"interrupted": true`.

This script is the entry point: flags, config, setup checks, the run and its summary. The machinery is in
the package: sleepppg.nights (which nights; reading one, through sleepppg.cache), sleepppg.staging (the
pipeline and its per-night boundary, the forward pass, metrics), sleepppg.outputs (CSV, hypnograms,
result.json), sleepppg.report (sleep report) and sleepppg.quality (signal quality).

Usage: python inference_ppg_only.py --config configs/config_demo.yaml [--edf DIR | --ppg "nights/*" --fs 64]
       [--checkpoint best_model.pth]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from sleepppg.cli import (
    file_argument,
    log_to_file,
    one_line,
    positive_int,
    positive_number,
    run_entry_point,
    setup_logging,
    some_of,
)
from sleepppg.config import load_config
from sleepppg.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP, WINDOW_SECONDS, WINDOWS_PER_SUBJECT
from sleepppg.errors import ConfigError, SetupError
from sleepppg.nights import Hdf5Selection, resolve_edf_inputs, select_hdf5_nights
from sleepppg.outputs import write_result
from sleepppg.preprocessing import preprocessing_settings
from sleepppg.report import format_night
from sleepppg.runio import make_run_dir
from sleepppg.runtime import keep_freed_memory, resolve_device
from sleepppg.scoring import find_label_files
from sleepppg.staging import RunRecord, fold_batchnorm, run_edf_mode, run_hdf5_mode, run_metrics

EXIT_NIGHT_FAILED = EXIT_FAILED  # 1: some nights failed; the others were staged and written

log = logging.getLogger("inference_ppg_only")


@dataclasses.dataclass
class Setup:
    """Everything a run needs, checked before anything is written."""

    cfg: dict
    inputs: list[Path]  # EDF / PPG mode: the recordings, in staging order (empty in HDF5 mode)
    device: torch.device
    model: torch.nn.Module
    model_info: dict  # result.json's "checkpoint"
    n_windows: int  # the model's span in 30-s epochs
    selection: Hdf5Selection | None  # HDF5 mode: the test nights
    run_dir: Path
    label_files: dict[str, Path] | None = None  # EDF / PPG mode with --labels: label file by zero-free ID


def load_model(checkpoint: str, device: torch.device) -> tuple[torch.nn.Module, dict, int]:
    """Rebuild the PPG-only model from its checkpoint alone; returns (model in eval mode with folded
    BatchNorm, on `device`; info for result.json; n_windows).

    Raises:
        SetupError: one line naming the file: missing, not a checkpoint, another model kind, non-finite weights.
    """
    from sleepppg.checkpoints import file_sha256, load_model_from_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise SetupError(f"checkpoint not found: {path} (set inference.best_model or pass --checkpoint)")
    try:
        # the loader refuses NaN/Inf weights itself, naming the first such tensor
        model, ckpt = load_model_from_checkpoint(path, map_location="cpu", expected_kind="ppg_only")
    except (ValueError, KeyError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())  # one line, whatever the loader said
        raise SetupError(f"cannot load checkpoint {path}: {reason[:300]}") from None
    model_args = dict(ckpt.get("model_args") or {})
    n_windows = int(model_args.get("n_windows", WINDOWS_PER_SUBJECT))
    fold_batchnorm(model).to(device)
    info = {"path": str(path.resolve()), "sha256": file_sha256(path), "model_kind": ckpt.get("model_kind"),
            "checkpoint_format": ckpt.get("checkpoint_format", "sleepppg"), "model_args": model_args,
            "epoch": ckpt.get("epoch")}
    if "reference_version" in ckpt:
        info["reference_version"] = ckpt["reference_version"]
    return model, info, n_windows


def set_up(args: argparse.Namespace) -> Setup:
    """Config (with the command line's overrides), inputs, device, model and nights, then the run folder.

    Raises:
        ConfigError, SetupError: bad setup; nothing is written.
    """
    if args.edf and args.ppg:
        raise SetupError("give --edf or --ppg, not both (--ppg reads EDF files too)")
    cfg = load_config(args.config, config_overrides(args))
    inf_cfg = cfg["inference"]
    edf_mode, ppg_spec = inf_cfg["only_inference"], inf_cfg["ppg_file"]
    if args.labels and not edf_mode:
        raise SetupError("--labels applies to EDF / PPG mode (--edf, --ppg) only: HDF5 mode reads the scored "
                         "stages from the processed files")
    check_mode_flags(args, edf_mode, bool(ppg_spec))
    label_files = find_label_files(args.labels, cfg["preprocessing"]["id_pattern"]) if args.labels else None
    inputs = resolve_edf_inputs(ppg_spec or inf_cfg["edf_file"], ppg=bool(ppg_spec)) if edf_mode else []
    device = resolve_device(args.device, cfg["gpu"]["device_id"])
    model, model_info, n_windows = load_model(inf_cfg["best_model"], device)
    selection = None if edf_mode else select_hdf5_nights(cfg, n_windows, inf_cfg["n_subjects"])
    run_dir = make_run_dir(inf_cfg["save_dir"])  # last: a failed setup leaves no empty run folder
    return Setup(cfg, inputs, device, model, model_info, n_windows, selection, run_dir, label_files)


def check_mode_flags(args: argparse.Namespace, edf_mode: bool, ppg_mode: bool) -> None:
    """Refuse a flag that the mode does not read, so that none is silently ignored: --fs and --column are read
    in PPG mode only (EDF mode finds the PPG by preprocessing.ppg_channels and takes the rate from the header;
    --ppg reads EDF files too and takes both flags), --n-subjects in HDF5 mode only (EDF / PPG mode stages
    every file given)."""
    mode = ("PPG" if ppg_mode else "EDF") if edf_mode else "HDF5"
    for flag, given in (("--fs", args.fs is not None), ("--column", args.column is not None)):
        if given and mode != "PPG":
            raise SetupError(f"{flag} applies to PPG mode (--ppg) only, not to {mode} mode"
                             + ("; --ppg reads EDF files too and takes it" if mode == "EDF" else ""))
    if args.n_subjects is not None and mode != "HDF5":
        raise SetupError(f"--n-subjects applies to HDF5 mode only; {mode} mode stages every file given")


def stage_and_report(args: argparse.Namespace, run: Setup) -> int:
    """Stage the nights, write result.json, print the summary; returns the exit status (0 all staged, 1 some
    nights failed or result.json could not be written, 130 on Ctrl-C: what was staged is still reported)."""
    cfg, run_dir, n_windows = run.cfg, run.run_dir, run.n_windows
    inf_cfg = cfg["inference"]
    edf_mode = inf_cfg["only_inference"]
    mode = ("PPG" if inf_cfg["ppg_file"] else "EDF") if edf_mode else "HDF5"
    flags = {k: inf_cfg[k] for k in ("save_csv", "save_graph", "save_json")}
    started = dt.datetime.now().isoformat(timespec="seconds")
    fmt = run.model_info["checkpoint_format"]
    if "reference_version" in run.model_info:
        fmt += f" ({run.model_info['reference_version']})"
    log.info("run %s: %s mode, %s checkpoint %s (%d windows = %.1f h), device %s", run_dir.name, mode,
             fmt, run.model_info["path"], n_windows, n_windows * WINDOW_SECONDS / 3600, run.device)
    t0 = time.perf_counter()
    record, interrupted = RunRecord(), False
    try:
        if edf_mode:
            run_edf_mode(run.model, n_windows, cfg, run.inputs, run_dir, run.device, flags, record, run.label_files)
        else:
            run_hdf5_mode(run.model, n_windows, cfg, run.selection, run_dir, run.device, flags, record)
    except KeyboardInterrupt:
        interrupted = True
        log.error("interrupted (Ctrl-C): reporting the %d night(s) staged so far", len(record.nights))
    elapsed = time.perf_counter() - t0
    metrics = run_metrics(record)
    if run.label_files is not None:
        unlabelled = [e["subject_id"] for e in record.nights if "performance" not in e]
        log.info("%d of %d staged night(s) compared with their labels; %d without labels%s", len(record.scored),
                 len(record.nights), len(unlabelled), f": {some_of(unlabelled, 10, 'nights')}" if unlabelled else "")

    status = EXIT_INTERRUPTED if interrupted else (EXIT_FAILED if record.failed else EXIT_OK)
    if flags["save_json"]:
        try:
            write_result(run_dir, {
                "run_id": run_dir.name, "run_dir": str(run_dir.resolve()), "mode": mode,
                "config": str(Path(args.config).resolve()), "checkpoint": run.model_info, "device": str(run.device),
                "random_seed": inf_cfg["random_seed"], "started_at": started,
                "finished_at": dt.datetime.now().isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 3),
                "interrupted": interrupted, "n_windows": n_windows, "epoch_s": WINDOW_SECONDS,
                "preprocessing": (preprocessing_settings(cfg["preprocessing"]["resample_method"],
                                                         cfg["preprocessing"]["ppg_channels"], n_windows)
                                  if edf_mode else None),
                "cache_root": str(Path(inf_cfg["cache_root"]).resolve()) if edf_mode else None,
                "n_nights_staged": len(record.nights), "n_nights_failed": len(record.failed),
                "nights": record.nights, "failed": record.failed, "metrics": metrics,
            })
        except OSError as err:
            log.error("cannot write %s: %s", run_dir / "result.json", err.strerror or err)
            status = status if interrupted else EXIT_FAILED

    report = write_validation(run, record) if not edf_mode and not interrupted else None

    for entry in record.nights:
        print(format_night(entry))
    if metrics is not None:
        print(f"{metrics['subjects']} subjects: accuracy {metrics['acc_mean']:.3f} +/- {metrics['acc_std']:.3f}, "
              f"kappa {metrics['kappa_mean']:.3f} +/- {metrics['kappa_std']:.3f} (per subject); pooled accuracy "
              f"{metrics['pooled']['accuracy']:.3f}, kappa {metrics['pooled']['kappa']:.3f}")
    for fail in record.failed:
        print(f"FAILED {fail['subject_id']} ({fail['file']}): {one_line(fail['reason'])}")
    print(f"{len(record.nights)} night(s) staged, {len(record.failed)} failed"
          f"{' (interrupted)' if interrupted else ''} in {elapsed:.1f} s. Results at: {run_dir}")
    if report is not None:
        print(f"Validation report: {report}")
    return status


def write_validation(run: Setup, record: RunRecord) -> Path | None:
    """HDF5 mode: the validation report of the staged nights' CSVs in <run>/validation/ (with
    evaluation.metadata_file when set); returns report.md, or None (a warning says why: no CSVs, or the
    report failed; the run's status does not change)."""
    from sleepppg.validation_study import report_after_run

    if not run.cfg["evaluation"]["validation_report"]:
        log.info("validation report not made (evaluation.validation_report: false)")
        return None
    csvs = [e["outputs"]["csv"] for e in record.nights if (e.get("outputs") or {}).get("csv")]
    if not csvs:
        if record.nights:
            log.warning("no validation report: no night CSV was written (inference.save_csv is false)")
        return None
    return report_after_run(csvs, run.run_dir / "validation", run.cfg["evaluation"]["metadata_file"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=file_argument,
                   help="YAML config (configs/config_cloud.yaml or config_demo.yaml)")
    p.add_argument("--checkpoint", type=file_argument, help="model checkpoint (.pth); overrides inference.best_model")
    p.add_argument("--edf", help="EDF mode on this file, folder (*.edf, *.bdf) or glob; overrides inference.edf_file "
                                 "and only_inference")
    p.add_argument("--ppg", help="stage PPG recordings of any format: a file, a folder or a glob (.csv .tsv .txt "
                                 ".npy .npz .mat .hea .edf .bdf); overrides inference.ppg_file and only_inference")
    p.add_argument("--fs", type=positive_number,
                   help="--ppg: sampling rate in Hz of the files that do not state one (a .npy, a table without a "
                        "time column, a .npz/.mat without fs); a file that states its rate keeps it (a warning when "
                        "they differ); overrides inference.ppg_fs")
    p.add_argument("--column", help="--ppg: the PPG column of a table (name or 1-based number) or the signal "
                                    "name of a WFDB/EDF record; overrides inference.ppg_column (default: "
                                    "preprocessing.ppg_channels patterns)")
    p.add_argument("--out-dir", "--out", dest="out", metavar="DIR",
                   help="output root; overrides inference.save_dir (a run folder is made inside; "
                        "--out is an older name)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N (default: auto; auto and cuda "
                        "take gpu.device_id)")
    p.add_argument("--labels", metavar="PATH",
                   help="EDF / PPG mode: scored stages, a file or folder of NSRR or Profusion XML or CSV hypnograms "
                        "(one stage per 30-s epoch; spellings in sleepppg.scoring), matched to nights by subject ID")
    p.add_argument("--n-subjects", type=positive_int,
                   help="HDF5 mode: subjects to stage; overrides inference.n_subjects")
    return p.parse_args(argv)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command line sets (flags win over the YAML, which is never rewritten)."""
    overrides: dict[str, Any] = {}
    if args.checkpoint:
        overrides["inference.best_model"] = args.checkpoint
    if args.out:
        overrides["inference.save_dir"] = args.out
    if args.n_subjects is not None:
        overrides["inference.n_subjects"] = args.n_subjects
    if args.edf:
        overrides["inference.edf_file"] = args.edf
        overrides["inference.only_inference"] = True
        overrides["inference.ppg_file"] = ""  # --edf wins over a ppg_file in the config
    if args.ppg:
        overrides["inference.ppg_file"] = args.ppg
        overrides["inference.only_inference"] = True
    if args.fs is not None:
        overrides["inference.ppg_fs"] = args.fs
    if args.column is not None:
        overrides["inference.ppg_column"] = args.column
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Run inference; returns the exit status (0 all staged, 1 some nights failed, 2 bad setup, 130 Ctrl-C)."""
    args = parse_args(argv)
    setup_logging()
    try:
        run = set_up(args)
        with log_to_file(run.run_dir / "inference.log"):
            return stage_and_report(args, run)
    except (ConfigError, SetupError) as err:
        log.error("%s", err)
        return EXIT_SETUP
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C): stopped; the outputs of nights already written are kept")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    keep_freed_memory()  # process-wide allocator setting: for the script's own process, not for importers
    sys.exit(run_entry_point(main))
