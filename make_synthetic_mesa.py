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

The generator lives in the package sleepppg.synthetic (hypnogram, physiology, waveforms, the MESA and DREAMT
writers, the cohort); from Python: `sleepppg.synthetic.cohort.make_cohort(out_root, n_subjects, hours=None,
seed=0, ..., name_format=, xml_format=, fmt=) -> [ids]`, `sleepppg.synthetic.mesa.write_subject(out_root,
subject_id, hours, seed, with_ecg=True, fs_ppg=256, ppg_label="Pleth", ...) -> (edf_path, xml_path)`,
`sleepppg.synthetic.dreamt.write_dreamt_subject(out_root, subject_id, hours, seed) -> csv_path`,
`sleepppg.synthetic.hypnogram.simulate_hypnogram(rng, n_epochs) -> NSRR stage codes`.

Usage: python make_synthetic_mesa.py --out ./demo/synthetic-mesa --n-subjects 40 [--hours 0.5] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from sleepppg.cli import HelpFormatter, non_negative_int, positive_int, positive_number, run_entry_point, setup_logging
from sleepppg.constants import EXIT_OK
from sleepppg.ids import mesa_commercial_ids
from sleepppg.synthetic.cohort import FORMATS, check_ids, make_cohort_counted
from sleepppg.synthetic.dreamt import MAX_DREAMT_DRAWN
from sleepppg.synthetic.mesa import MESA_NAME_FORMAT, XML_FORMATS, check_name_format

log = logging.getLogger("make_synthetic_mesa")


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
    ids, written, skipped = make_cohort_counted(
        args.out, args.n_subjects, args.hours, args.seed, args.min_hours, args.max_hours, args.no_ecg_fraction,
        args.test_fraction, args.workers, args.ids, args.overwrite, args.full_montage, args.name_format,
        args.xml_format, args.format)
    kind = "DREAMT-shaped" if args.format == "dreamt" else "MESA-shaped" if args.name_format == MESA_NAME_FORMAT \
        else "NSRR-shaped"
    print(f"synthetic {kind} cohort: {len(ids)} subjects ({written} written, {skipped} skipped) "
          f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
