"""Preprocess MESA polysomnography (EDF + NSRR XML) into the HDF5 windows and labels SleepPPG-Net trains on.

Other NSRR-style cohorts work too: files pair by the subject ID that `preprocessing.id_pattern` (`--id-pattern`,
a regex with one group; MESA's by default) finds in their names, and the annotation of `<stem>.edf` is
`<stem>-nsrr.xml` (NSRR XML) or `<stem>-profusion.xml` (Compumedics Profusion XML; NSRR preferred when both).
IDs that differ only by leading zeros or letter case (282 and 0282, S3 and s003; MESA and DREAMT alike) are
all skipped as 'id_clash'.

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
  subject_warnings.json (id, file, warning per kept subject that looks suspicious), subject_quality.json (id,
  file and the signal-quality figures of sleepppg.quality per kept subject), extract_manifest.json
  (settings, sources, subjects, and each HDF5 file's size, mtime and dataset shapes: says whether a rerun is up
  to date; a truncated or rewritten HDF5 file is written again), logs/processing.log.

How it runs (sleepppg.extraction): worker processes preprocess subjects one at a time and each writes
`<out>/.parts/<id>.npz` (sleepppg.parts: temporary name, then rename), so a run killed at any moment resumes
without redoing finished subjects. A child process then streams the parts, in sorted ID order, into pre-sized
HDF5 datasets written under temporary names and renamed at the end (sleepppg.assembly). Memory stays at about
one subject per process whatever the cohort size.

Bad data never stops the run: a subject whose EDF or XML is missing, unreadable (no permission), truncated,
not an EDF, has an absurd header field (no signals, record duration 0/negative/NaN, a header size that
disagrees with the signal count, a PPG with no scale or no samples), no PPG channel, a flat or mostly-NaN PPG,
a malformed XML, no stage events, or no scored epoch within the recording is logged, skipped and listed in
failed_subjects.json with its file, kind and reason. So is a subject that breaks the code in a way nobody
foresaw ('unexpected_error'), or whose worker process is killed, also when it runs again alone (by the
out-of-memory killer: 'worker_killed', the reason naming the signal); the other subjects go on. Suspicious but
usable data (a PPG at its digital limits for over 5% of the night, stages ending over 30 min before or after the
EDF, a record count that disagrees with the file size, bytes after the last record, two channels with the same
label, an unusable ECG, a PPG flat or clipped beyond sleepppg.quality's limits, a signal that does not look like a
PPG: a pulse in under half of its epochs, the likely cause named) is kept and listed in subject_warnings.json. A
damaged part file from an earlier run is detected (each array's CRC-32 and shape) and rebuilt.

Exit status: 0 every subject done; 1 some subjects failed; 2 bad setup (a missing or unreadable folder, an
output folder that is a file or not writable, no subjects, a bad config) or a full disk (one line saying how
much to free; run the same command again); 130 on Ctrl-C (finished subjects are kept).

DREAMT (`--format dreamt --csv-dir DIR`, or preprocessing.format/csv_dir): one CSV per participant
(S002_whole_df.csv -> subject S002) read by sleepppg.dreamt.preprocess_dreamt: the `preprocessing.ppg_column`
(BVP) signal, the ECG column when present, stages from Sleep_Stage; epochs start at lights-off (the first
sample not staged P). The same preprocessing, part files, outputs and bad-subject handling as the EDF path.

Usage: python extract_mesa_data.py --config configs/config_cloud.yaml --workers 8
       python extract_mesa_data.py --format dreamt --csv-dir ./DREAMT/data_64Hz --out-dir ./dreamt-x
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sleepppg.assembly import assemble_isolated, files_changed, files_record, write_stats
from sleepppg.cli import file_argument, non_negative_int, one_line, positive_int, run_entry_point, setup_logging
from sleepppg.config import load_config
from sleepppg.constants import ECG_FILE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP, INDEX_FILE, PPG_FILE
from sleepppg.diskfull import DiskFullError, bytes_needed, disk_full_message, naming_a_full_disk
from sleepppg.errors import ConfigError, SetupError
from sleepppg.extraction import (
    DREAMT_KEYS,
    find_dreamt_subjects,
    find_subjects,
    part_settings,
    plan,
    run_subjects,
)
from sleepppg.ids import compile_id_pattern
from sleepppg.parts import PARTS_DIR, BadPartError, part_path, remove_stale_temporaries
from sleepppg.paths import OutputPathError, OutputRoot, is_disk_full
from sleepppg.preprocessing import file_signature
from sleepppg.processed import STATS_NPY, STATS_TXT
from sleepppg.runio import write_text_atomic
from sleepppg.runtime import keep_freed_memory

log = logging.getLogger("extract_mesa_data")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "config_cloud.yaml"
FAILED_FILE = "failed_subjects.json"
MANIFEST_FILE = "extract_manifest.json"
WARNINGS_FILE = "subject_warnings.json"  # subjects kept despite something suspicious (id, file, warning)
QUALITY_FILE = "subject_quality.json"  # every kept subject's PPG signal quality (id, file, sleepppg.quality figures)


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
        "windows_per_subject": (args.windows_per_subject if args.windows_per_subject is not None
                                else cfg["data"]["windows_per_subject"]),
        "id_pattern": pre["id_pattern"],
        "format": args.format or pre["format"],
        "csv_dir": args.csv_dir or pre["csv_dir"],
        **{key: pre[key] for key in DREAMT_KEYS},
    }
    check_format_flags(args, settings["format"])
    if args.id_pattern is not None:
        try:
            settings["id_pattern"] = compile_id_pattern(args.id_pattern).pattern
        except ValueError as err:
            raise ConfigError(f"--id-pattern: {err}") from None
    if settings["workers"] == 0:
        settings["workers"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return settings


def check_format_flags(args: argparse.Namespace, fmt: str) -> None:
    """Refuse a folder flag that the input format (--format, else preprocessing.format) does not read, so that it
    is never silently ignored: --csv-dir is read by the DREAMT format only, --edf-dir and --xml-dir by the EDF
    format only."""
    if fmt != "dreamt" and args.csv_dir is not None:
        raise ConfigError(f"--csv-dir applies to --format dreamt only; the input format is {fmt!r} (add --format "
                          "dreamt, or leave --csv-dir out)")
    if fmt == "dreamt":
        given = [flag for flag, value in (("--edf-dir", args.edf_dir), ("--xml-dir", args.xml_dir))
                 if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --format edf "
                              "only; --format dreamt reads the CSVs of --csv-dir")


def check_setup(settings: dict) -> str | None:
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
    root = OutputRoot(out)
    for name in (PPG_FILE, ECG_FILE, INDEX_FILE, STATS_NPY, STATS_TXT, FAILED_FILE, WARNINGS_FILE, MANIFEST_FILE):
        try:  # refused before any work: a link planted at an output name, a folder where a file goes
            root.path(name)
        except OutputPathError as err:
            return str(err)
    if settings["workers"] < 1:
        return f"--workers must be >= 1, got {settings['workers']}"
    if settings["windows_per_subject"] < 1:
        return f"--windows-per-subject must be >= 1, got {settings['windows_per_subject']}"
    return None


def list_subjects(args: argparse.Namespace, settings: dict) -> tuple[dict, dict, list[str]]:
    """(all subjects: id -> (edf, xml), problems: id -> (kind, reason), the IDs wanted, sorted).

    Raises:
        SetupError: a folder cannot be listed, --subjects names an unknown ID, or nothing can be processed.
    """
    dreamt = settings["format"] == "dreamt"
    edf_dir, xml_dir = Path(settings["edf_dir"]), Path(settings["xml_dir"])
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
        wanted = wanted[:args.limit]
    if not any(all_subjects[s][0] and all_subjects[s][1] for s in wanted):
        where = f"CSV files in {settings['csv_dir']}" if dreamt else f"EDF/XML pairs in {edf_dir} and {xml_dir}"
        raise SetupError(f"no {where} to process")
    return all_subjects, problems, wanted


def read_manifest(path: Path) -> dict | None:
    """The manifest of the last finished run, or None (absent, or damaged: then it is ignored, with a log line)."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring damaged %s (%s)", path, err)
        return None
    return manifest if isinstance(manifest, dict) else None


def collect(results: list[dict], reused: dict[str, dict], failed: list[dict], all_subjects: dict
            ) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    """(IDs done, sorted; failures, by ID, in failed_subjects.json's form; warnings, in
    subject_warnings.json's form; signal quality, in subject_quality.json's form) from this run's results, the
    reused parts' records and the failures known before processing. Each new failure is logged."""
    records = dict(reused)
    ok = sorted(reused)
    failed = list(failed)
    for result in results:
        if result["ok"]:
            ok.append(result["id"])
            records[result["id"]] = result
        else:
            log.warning("subject %s skipped (%s): %s", result["id"], result["kind"], one_line(result["reason"]))
            failed.append({"id": result["id"], "file": result["file"], "kind": result["kind"],
                           "reason": result["reason"]})
    ok.sort()
    failed.sort(key=lambda item: item["id"])
    warning_list = [{"id": sid, "file": str(all_subjects[sid][0]), "warning": text}
                    for sid in ok for text in records[sid]["warnings"]]
    quality_list = [{"id": sid, "file": str(all_subjects[sid][0]), **records[sid]["signal_quality"]} for sid in ok]
    return ok, failed, warning_list, quality_list


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=file_argument,
                        help="YAML config (preprocessing section and data.windows_per_subject); "
                             "default: the defaults of configs/config_cloud.yaml")
    parser.add_argument("--edf-dir", help="EDF folder (default ./mesa-commercial-use/polysomnography/edfs)")
    parser.add_argument("--xml-dir", help="XML folder (default .../polysomnography/annotations-events-nsrr)")
    parser.add_argument("--out-dir", help="output folder (default ./mesa-x)")
    parser.add_argument("--format", choices=("edf", "dreamt"),
                        help="edf: MESA EDF + NSRR XML (default); dreamt: one DREAMT CSV per participant in --csv-dir")
    parser.add_argument("--csv-dir", help="--format dreamt: the folder of DREAMT CSVs (e.g. data_64Hz)")
    parser.add_argument("--workers", type=non_negative_int,
                        help="processes (default: preprocessing.workers; 0 = all cores)")
    parser.add_argument("--subjects", help="only these IDs, comma-separated (e.g. 0001,0002)")
    parser.add_argument("--id-pattern", help="regex with one group around the subject ID, searched in file "
                                             "names, any case (default: preprocessing.id_pattern, MESA's "
                                             "'mesa[-_]?sleep[-_]?(\\d+)')")
    parser.add_argument("--limit", type=positive_int, help="only the first N subject IDs (sorted)")
    parser.add_argument("--overwrite", action="store_true", help="redo every subject, ignoring earlier results")
    parser.add_argument("--keep-parts", action="store_true", help="keep the per-subject part files after success")
    parser.add_argument("--windows-per-subject", type=positive_int, help="windows per night (default 1200 = 10 h)")
    parser.add_argument("--resample-method", choices=("linear", "polyphase"),
                        help="linear (the reference) or polyphase (default: preprocessing.resample_method, linear)")
    parser.add_argument("--compression", choices=("none", "lzf", "gzip"),
                        help="HDF5 compression (default: preprocessing.compression, none: fastest reads)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """The whole extraction; bad setup raises SetupError, a full disk DiskFullError."""
    t_start = time.perf_counter()
    try:
        settings = resolve_settings(args)
    except ConfigError as err:
        raise SetupError(str(err)) from None
    problem = check_setup(settings)
    if problem:
        raise SetupError(problem)
    out_dir, parts_dir = Path(settings["out_dir"]), Path(settings["out_dir"]) / PARTS_DIR
    setup_logging(out_dir / "logs" / "processing.log")
    all_subjects, problems, wanted = list_subjects(args, settings)

    sources = {sid: [file_signature(all_subjects[sid][0]), file_signature(all_subjects[sid][1])]
               for sid in wanted}
    manifest_key = {"settings": part_settings(settings), "compression": settings["compression"],
                    "chunk_windows": settings["chunk_windows"], "sources": sources}
    manifest_path = out_dir / MANIFEST_FILE
    outputs_exist = all((out_dir / name).is_file() for name in (PPG_FILE, ECG_FILE, INDEX_FILE))
    previous = None if args.overwrite or not outputs_exist else read_manifest(manifest_path)
    if previous is not None and previous.get("key") == manifest_key:
        n_done = len(previous.get("subjects", []))
        changed = files_changed(out_dir, previous.get("outputs"), n_done * settings["windows_per_subject"])
        if changed is None:
            n_failed = len(previous.get("failed", []))
            print(f"up to date: {out_dir} already holds {n_done} subjects "
                  f"({n_failed} failed earlier; see {FAILED_FILE}); use --overwrite to redo")
            return EXIT_FAILED if n_failed else EXIT_OK
        log.warning("the outputs in %s are not those extraction wrote: %s; writing them again (from the part "
                    "files kept, the other subjects preprocessed again)", out_dir, changed)
    manifest_path.unlink(missing_ok=True)  # the outputs are about to change: the old manifest would not describe them
    remove_stale_temporaries(out_dir)

    n_windows = settings["windows_per_subject"]
    results: list[dict] = []
    for attempt in range(2):  # a part damaged after it was checked is rebuilt once, then assembly retried
        jobs, reused, failed = plan(wanted, all_subjects, problems, settings, args.overwrite and attempt == 0)
        if attempt == 0:
            for item in failed:
                log.warning("subject %s skipped (%s): %s", item["id"], item["kind"], one_line(item["reason"]))
        log.info("%d subjects: %d to process, %d reused from %s, %d without a usable pair; %d worker(s)",
                 len(wanted), len(jobs), len(reused), parts_dir, len(failed), settings["workers"])
        n_ok_max = len(jobs) + len(reused)
        with naming_a_full_disk(parts_dir, bytes_needed(len(jobs), n_ok_max, n_windows)):
            results = run_subjects(jobs, settings["workers"])
        ok, failed, warning_list, quality_list = collect(results, reused, failed, all_subjects)
        with naming_a_full_disk(out_dir / FAILED_FILE, bytes_needed(0, len(ok), n_windows)):
            write_text_atomic(out_dir / FAILED_FILE, json.dumps(failed, indent=2) + "\n")
            write_text_atomic(out_dir / WARNINGS_FILE, json.dumps(warning_list, indent=2) + "\n")
            write_text_atomic(out_dir / QUALITY_FILE, json.dumps(quality_list, indent=2) + "\n")
        if not ok:
            log.error("no subject could be processed; no HDF5 written (any HDF5 files in %s are from an earlier "
                      "run)", out_dir)
            break
        log.info("assembling %d subjects into %s", len(ok), out_dir)
        try:
            with naming_a_full_disk(out_dir / PPG_FILE, bytes_needed(0, len(ok), n_windows)):
                stats = assemble_isolated(out_dir, ok, parts_dir, settings)
        except BadPartError as err:
            if attempt == 1:
                raise
            log.warning("%s; rebuilding it", err)
            Path(err.part).unlink(missing_ok=True)  # the next pass processes that subject again
            continue
        stats["failed_subjects"] = len(failed)
        stats["subjects_with_warnings"] = len({w["id"] for w in warning_list})
        manifest = {"key": manifest_key, "subjects": ok, "failed": [f["id"] for f in failed],
                    "outputs": files_record(out_dir)}  # read back by the next run's up-to-date check
        with naming_a_full_disk(out_dir / MANIFEST_FILE):
            write_stats(out_dir, stats)
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
        if not args.keep_parts:
            for sid in ok:
                part_path(parts_dir, sid).unlink(missing_ok=True)
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
        if not is_disk_full(err):
            raise
        print(f"error: {disk_full_message(err.filename or args.out_dir or '.', 0)}", file=sys.stderr)
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
    sys.exit(run_entry_point(main))
