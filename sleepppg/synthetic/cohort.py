"""A synthetic cohort: which subjects, which of them have no ECG, how long each night is, and writing them
(in worker processes if asked) with sleepppg.synthetic.mesa or sleepppg.synthetic.dreamt.

IDs are real MESA commercial-use IDs (data/mesa_commercial_use_ids.txt), a `test_fraction` share of them from
the SleepPPG-Net test list so the fixed test split has members; DREAMT-shaped cohorts are numbered S002, S003,
...; explicit IDs are kept as written (leading zeros, letters, any length). Every subject is seeded from (seed,
ID), so the same seed gives byte-identical files whatever the number of workers. Subjects whose files all exist
are skipped unless `overwrite`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from sleepppg.ids import id_clashes, mesa_commercial_ids, sleepppg_test_subjects
from sleepppg.synthetic.dreamt import dreamt_ids, dreamt_path, write_dreamt_subject
from sleepppg.synthetic.mesa import (
    MESA_NAME_FORMAT,
    check_name_format,
    edf_path,
    write_subject,
    xml_dialects,
    xml_path,
)
from sleepppg.synthetic.signals import subject_rng

log = logging.getLogger("sleepppg.synthetic")

FORMATS = ("mesa", "dreamt")  # EDF + XML in NSRR's layout, or DREAMT's one CSV per night
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")  # IDs become part of file names


def check_ids(ids: list) -> list[str]:
    """IDs as text, as written (leading zeros, letters); ValueError for an empty, unsafe or repeated ID."""
    out = [str(i) for i in ids]
    bad = [i for i in out if not SAFE_ID.fullmatch(i)]
    if bad:
        raise ValueError(f"IDs may hold only letters, digits, '-' and '_': {bad}")
    repeated = sorted({i for i in out if out.count(i) > 1})
    if repeated:
        raise ValueError(f"IDs given more than once: {repeated}")
    # the pair check and extraction skip IDs that differ only by leading zeros or letter case (sleepppg.ids.id_key;
    # digit IDs seed alike)
    clashes = id_clashes(out)
    if clashes:
        raise ValueError(f"IDs that differ only by leading zeros or letter case are the same subject: {clashes}")
    return out


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
    return make_cohort_counted(out_root, n_subjects, hours, seed, min_hours, max_hours, no_ecg_fraction,
                               test_fraction, workers, ids, overwrite, full_montage, name_format, xml_format,
                               fmt)[0]


def make_cohort_counted(out_root: str | Path, n_subjects: int, hours: float | None = None, seed: int = 0,
                        min_hours: float = 8.5, max_hours: float = 11.5, no_ecg_fraction: float = 0.1,
                        test_fraction: float = 0.3, workers: int = 1, ids: list[str] | None = None,
                        overwrite: bool = False, full_montage: bool = False, name_format: str = MESA_NAME_FORMAT,
                        xml_format: str = "nsrr", fmt: str = "mesa") -> tuple[list[str], int, int]:
    """`make_cohort`, also counting the subjects: (IDs, how many were written, how many skipped)."""
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
