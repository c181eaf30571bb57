"""Extraction of a cohort, subject by subject: which subjects there are, which need processing (resume), and
the per-subject job inside its error boundary (the part files are then assembled by sleepppg.assembly).

- `find_subjects` / `find_dreamt_subjects`: subject ID -> its files, plus the IDs that cannot be paired.
- `plan`: jobs to run, parts of an earlier run still valid (same settings and source files, intact), and the
  failures known before reading anything.
- `process_subject`: one subject's job, run in a worker (sleepppg.workers): labels from the XML, the
  preprocessed recording (sleepppg.preprocessing), a part file (sleepppg.parts). It is the subject's error
  boundary: any exception becomes a failed result with a kind and a reason, as does a worker killed by a
  signal (`worker_died`); only a full disk stops the run. `run_subjects` runs the jobs.

A result is dict(id, ok, kind, reason, file, warnings, seconds[, has_ecg, n_recorded_windows, signal_quality]);
a failure in failed_subjects.json is dict(id, file, kind, reason). signal_quality is sleepppg.quality's figures
of the subject's preprocessed PPG (flat and clipped shares, share of epochs with a pulse...); the figures beyond
their limits are among the subject's warnings.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from sleepppg import workers
from sleepppg.annotations import xml_to_labels
from sleepppg.constants import IGNORE_INDEX, MESA_ID_PATTERN, WINDOW_SECONDS
from sleepppg.diskfull import disk_full_at
from sleepppg.errors import BadRecordingError
from sleepppg.ids import clash_reason, id_clashes
from sleepppg.parts import PARTS_DIR, BadPartError, part_path, read_part, read_part_meta, write_part
from sleepppg.paths import is_disk_full
from sleepppg.preprocessing import input_signature, preprocess_recording, preprocessing_settings
from sleepppg.quality import ppg_quality, quality_warnings

log = logging.getLogger("sleepppg.extraction")

DREAMT_KEYS = ("ppg_column", "nominal_fs", "max_gap_s")  # preprocessing keys only DREAMT extraction uses
LABEL_HORIZON_EPOCHS = 2880  # stages are read over 24 h to compare the XML's length with the EDF's
XML_LENGTH_WARN_S = 1800.0  # warn when the stages end more than 30 min before or after the EDF does


def find_subjects(edf_dir: Path, xml_dir: Path, id_pattern: str = MESA_ID_PATTERN
                  ) -> tuple[dict[str, tuple[Path | None, Path | None]], dict[str, tuple[str, str]]]:
    """All subject IDs seen in either folder -> (edf or None, xml or None), plus {id: (kind, reason)} for IDs
    that are not processed: 'duplicate_files' (two files of one kind) and 'id_clash' (IDs that differ only
    by leading zeros or letter case, e.g. 282 and 0282: every one of them is skipped, none is guessed).

    Annotations are `<stem>-nsrr.xml` or `<stem>-profusion.xml` (sleepppg.pairing); when an ID has both, the
    NSRR XML is used and the log says so.
    """
    from sleepppg.pairing import pair_files

    pairing = pair_files(edf_dir, xml_dir, id_pattern)
    problems: dict[str, tuple[str, str]] = {}
    for dup in pairing.duplicates():
        problems[dup["id"]] = ("duplicate_files", f"more than one {dup['kind']} file for this ID: {dup['files']}")
    for clash in pairing.id_clashes():
        for sid in clash["ids"]:
            problems[sid] = ("id_clash", clash_reason(clash["ids"], clash["files"]))
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
    """DREAMT: participant ID -> (csv, csv) (one file holds both the signals and the stages), plus {id: (kind,
    reason)} for IDs not processed, as `find_subjects`: 'duplicate_files' (more than one CSV) and 'id_clash'
    (S3 and S003: sleepppg.ids.id_clashes)."""
    from sleepppg import dreamt

    files, duplicates = dreamt.find_dreamt_files(csv_dir)
    problems = {sid: ("duplicate_files", reason) for sid, reason in duplicates.items()}
    for ids in id_clashes(files):
        for sid in ids:
            problems[sid] = ("id_clash", clash_reason(ids, [files[i].name for i in ids]))
    return {sid: (path, path) for sid, path in files.items()}, problems


def part_settings(settings: dict) -> dict:
    """The run's settings as `preprocessing_settings` (what a part file depends on)."""
    keyed = preprocessing_settings(settings["resample_method"], settings["ppg_channels"],
                                   settings["windows_per_subject"])
    if settings["format"] == "dreamt":
        keyed.update(format="dreamt", **{key: settings[key] for key in DREAMT_KEYS})
    return keyed


def plan(wanted: list[str], all_subjects: dict, problems: dict, settings: dict,
         overwrite: bool) -> tuple[list[dict], dict[str, list[str]], list[dict]]:
    """Split the wanted IDs into jobs to run, IDs whose part file from an earlier run still holds (same
    settings, same source files, every array intact: {id: {"warnings", "signal_quality"}}), and failures known
    before reading anything (missing partner, duplicate files, IDs that clash). A damaged part is logged and
    rebuilt."""
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
            signature = input_signature(part_settings(settings), edf, xml)
            part = part_path(parts_dir, sid)
            meta = None if overwrite or not part.is_file() else read_part_meta(part)
            if meta is not None and meta.get("signature") == signature:
                try:
                    _, arrays = read_part(part, settings["windows_per_subject"])
                    reused[sid] = _reused_record(meta, arrays["ppg"])
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


def _reused_record(meta: dict, ppg_WS: np.ndarray) -> dict:
    """A reused part's warnings and signal quality; a part whose meta lacks the figures gets them (and their
    warnings) from its PPG windows."""
    warnings = list(meta.get("warnings", []))
    quality = meta.get("signal_quality")
    if not isinstance(quality, dict):
        n_recorded = int(meta.get("n_recorded_windows", ppg_WS.shape[0]))
        quality = ppg_quality(ppg_WS, n_recorded, meta.get("gap_epochs", []))
        warnings += quality_warnings(quality)
    return {"warnings": warnings, "signal_quality": quality}


# ----------------------------------------------------------------------------------------------------------
# One subject


def labels_for(labels_long: np.ndarray, xml: str, rec: dict, n_windows: int) -> tuple[np.ndarray, list[str]]:
    """From the XML's labels over LABEL_HORIZON_EPOCHS (`xml_to_labels`): the labels of the first
    `n_windows` epochs (-1 after the recording and in its gaps: the XML and the EDF both count time from the
    EDF's start time, so an EDF+D's later part keeps its own stages) and warnings about the XML's length
    against the EDF's.

    Raises:
        BadRecordingError: 'no_scored_epochs' when no epoch within the recording carries a stage (e.g. every
            stage lies after the recording ends).
    """
    labels = labels_long[:n_windows].copy()
    labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
    labels[rec.get("gap_epochs") or []] = IGNORE_INDEX  # epochs inside a gap (an EDF+D pause) hold no signal
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


def _preprocess_and_write(job: dict) -> dict:
    """Labels and preprocessed recording of one subject, written to its part file; returns the part's meta.

    Raises:
        BadRecordingError for bad data; anything else for what nobody foresaw.
    """
    n_windows = job["windows_per_subject"]
    if job.get("format") == "dreamt":
        from sleepppg import dreamt

        labels, rec = dreamt.preprocess_dreamt(job["edf"], n_windows, job["resample_method"], job["ppg_column"],
                                                job["nominal_fs"], job["max_gap_s"])
        labels = np.array(labels, dtype=np.int64)
        labels[rec["n_recorded_windows"]:] = IGNORE_INDEX  # epochs beyond the recording
        xml_warnings = []
    else:
        stage_warnings: list[str] = []  # unknown stage values left unscored
        labels_long = xml_to_labels(job["xml"], max(n_windows, LABEL_HORIZON_EPOCHS), stage_warnings)  # cheap
        rec = preprocess_recording(job["edf"], n_windows, job["resample_method"], tuple(job["ppg_channels"]))
        labels, xml_warnings = labels_for(labels_long, job["xml"], rec, n_windows)
        xml_warnings = stage_warnings + xml_warnings
    for text in rec["warnings"]:  # the reader's, EDF+D pauses, an unusable ECG (as in subject_warnings.json)
        log.warning("%s: %s", Path(job["edf"]).name, text)
    for text in xml_warnings:
        log.warning("%s: %s", Path(job["xml"]).name, text)
    quality = ppg_quality(rec["ppg_windows"], rec["n_recorded_windows"], rec["gap_epochs"])
    signal_warnings = quality_warnings(quality)
    for text in signal_warnings:
        log.warning("%s: %s", Path(job["edf"]).name, text)
    meta = {"id": job["id"], "signature": job["signature"], "has_ecg": rec["has_ecg"],
            "n_recorded_windows": rec["n_recorded_windows"], "ppg_channel": rec["ppg_channel"],
            "ppg_fs": rec["ppg_fs"], "gap_epochs": rec["gap_epochs"], "signal_quality": quality,
            "warnings": rec["warnings"] + xml_warnings + signal_warnings}
    arrays = {"ppg": rec["ppg_windows"], "labels": labels}
    if rec["has_ecg"]:
        arrays["ecg"] = rec["ecg_windows"]
    write_part(job["part"], arrays, meta)
    return meta


def failure(job: dict, kind: str, reason: str, file: str | None = None, seconds: float = 0.0) -> dict:
    """The result of a subject that failed."""
    return {"id": job["id"], "ok": False, "kind": kind, "reason": reason, "file": file or job["edf"],
            "warnings": [], "seconds": seconds}


def process_subject(job: dict) -> dict:
    """One subject's job inside its error boundary: preprocess it and write `<parts>/<id>.npz` atomically.

    Args:
        job: dict(id, edf, xml, part, signature, windows_per_subject, resample_method, ppg_channels, format;
            with format 'dreamt' also ppg_column, nominal_fs, max_gap_s, and edf = xml = the participant's CSV).
    Returns:
        dict(id, ok, kind, reason, file, warnings, seconds, has_ecg, n_recorded_windows, signal_quality); any
        exception gives ok=False with its kind ('unexpected_error' for one nobody foresaw: out of memory...),
        reason and file.
    Raises:
        OSError (ENOSPC, naming the part): only for a full disk, which stops the run, not the subject.
    """
    t0 = time.perf_counter()
    try:
        meta = _preprocess_and_write(job)
    except BadRecordingError as err:
        return failure(job, err.kind, str(err), err.path, time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 - a failure nobody foresaw costs this subject only
        if is_disk_full(err):
            raise disk_full_at(job["part"]) from None
        log.debug("subject %s failed", job["id"], exc_info=True)
        return failure(job, "unexpected_error", f"{type(err).__name__}: {err}", seconds=time.perf_counter() - t0)
    return {"id": job["id"], "ok": True, "kind": None, "reason": None, "file": job["edf"],
            "warnings": meta["warnings"], "seconds": time.perf_counter() - t0, "has_ecg": meta["has_ecg"],
            "n_recorded_windows": meta["n_recorded_windows"], "signal_quality": meta["signal_quality"]}


def worker_died(job: dict, how: str) -> dict:
    """The result of a subject whose worker process died under it, also when it ran alone (`how`: 'killed by
    signal SIGKILL (9)': most often the out-of-memory killer)."""
    kind = "worker_killed" if how.startswith("killed") else "worker_died"
    hint = "; out of memory?" if "SIGKILL" in how else ""
    return failure(job, kind, f"its worker process was {how} while preprocessing it, also when it ran alone{hint}")


def run_subjects(jobs: list[dict], n_workers: int) -> list[dict]:
    """`process_subject` over `jobs` in `n_workers` processes (sleepppg.workers); results in job order."""
    return workers.run_jobs(process_subject, jobs, n_workers, worker_died)
