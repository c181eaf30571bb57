"""Run the whole SleepPPG-Net pipeline on a synthetic MESA-shaped cohort, exactly as a user would.

Steps (each one is a plain command of this repo, printed before it runs):
  1. make_synthetic_mesa.py    -> <cohort>/polysomnography/{edfs,annotations-events-nsrr}
  2. verify_mesa_dataset.py    -> <workdir>/paircheck_result.json
  3. extract_mesa_data.py      -> data.* HDF5 files (preprocessing.out_dir)
  4. verify_mesa_outputs.py
  5. train_ppg_only.py         -> output.save_dir/ppg_only_<timestamp>/ (TensorBoard logs, checkpoints, results)
  6. inference_ppg_only.py     -> test subjects from the HDF5 (with labels: metrics, CSVs, hypnograms)
  7. inference_ppg_only.py --edf -> raw EDF nights (no labels), with the .npy cache
Paths come from the config (default configs/config_demo.yaml); the cohort root is two folders above
`preprocessing.edf_dir`. A rerun reuses finished steps: each step leaves a stamp in <workdir>/.demo_steps/
holding its command and the config's hash (an edited config reruns the steps), and the scripts themselves
resume (cohort files, extraction parts, caches). A failing step stops the demo with that step's name and exit
status.

All metrics printed here are on SYNTHETIC data: they say the pipeline works, not how well it stages MESA.

Usage: python run_demo.py [--config configs/config_demo.yaml] [--subjects 24] [--hours H] [--epochs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

from sleepppg_common import ConfigError, load_config, setup_logging, write_text_atomic

REPO_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = "configs/config_demo.yaml"
DEFAULT_SUBJECTS = 24  # ~16 train, 4 val, 4+ test nights: a 2-core CPU trains 3 epochs in minutes
DEFAULT_EDF_NIGHTS = 2  # raw-EDF inference on the first few nights of the cohort (one is enough to show it)

log = logging.getLogger("run_demo")


class StepFailed(RuntimeError):
    """A pipeline step exited non-zero."""


def cohort_root(cfg: dict) -> Path:
    """The synthetic cohort's root: `preprocessing.edf_dir` is <root>/polysomnography/edfs."""
    return Path(cfg["preprocessing"]["edf_dir"]).parent.parent


def run_step(name: str, cmd: list[str], stamp_dir: Path, config_digest: str, force: bool = False) -> float:
    """Run one step unless its stamp says the same command, with the same config contents, already finished.
    Returns seconds spent."""
    stamp = stamp_dir / f"{name}.json"
    printable = " ".join(shlex.quote(c) for c in cmd)
    if not force and stamp.is_file():
        try:
            done = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            done = {}
        if done.get("command") == printable and done.get("config_sha256") == config_digest:
            log.info("[%s] already done (%.0f s last time), skipping: %s", name, done.get("seconds", 0), printable)
            return 0.0
    log.info("[%s] $ %s", name, printable)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=Path.cwd())
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise StepFailed(f"step '{name}' failed with exit status {proc.returncode} after {seconds:.0f} s: {printable}")
    write_text_atomic(stamp, json.dumps({"command": printable, "config_sha256": config_digest,
                                         "seconds": round(seconds, 1)}))
    log.info("[%s] done in %.0f s", name, seconds)
    return seconds


def newest_run(save_dir: Path, model: str) -> Path:
    """The newest finished training run folder (one with results/test_results.json)."""
    runs = sorted(p for p in save_dir.glob(f"{model}_*") if (p / "results" / "test_results.json").is_file())
    if not runs:
        raise StepFailed(f"no finished {model} run under {save_dir}")
    return runs[-1]


def newest_inference(save_dir: Path) -> Path | None:
    """The newest inference output folder (<save_dir>/<run_id>/ holding a result.json)."""
    found = [p.parent for p in save_dir.glob("*/result.json")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (paths and sizes)")
    p.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS, help="synthetic nights to generate")
    p.add_argument("--hours", type=float, default=None,
                   help="fixed night length in hours (default: lengths vary around 10 h, as in MESA)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: training.num_epochs)")
    p.add_argument("--edf-nights", type=int, default=DEFAULT_EDF_NIGHTS, help="nights staged in raw-EDF mode")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    p.add_argument("--force", action="store_true", help="rerun every step even if it finished before")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    if args.subjects < 8:
        log.error("--subjects must be at least 8 (train, validation and test each need nights)")
        return 2
    py = sys.executable
    digest = hashlib.sha256(Path(args.config).read_bytes()).hexdigest()  # an edited config reruns the steps
    root = cohort_root(cfg)
    workdir = Path(cfg["preprocessing"]["out_dir"]).parent
    stamps = workdir / ".demo_steps"
    save_dir = Path(cfg["output"]["save_dir"])
    edf_dir = Path(cfg["preprocessing"]["edf_dir"])
    gen = [py, str(REPO_DIR / "make_synthetic_mesa.py"), "--out", str(root), "--n-subjects", str(args.subjects),
           "--seed", str(args.seed)]
    if args.hours is not None:
        gen += ["--hours", str(args.hours)]
    train = [py, str(REPO_DIR / "train_ppg_only.py"), "--config", args.config, "--model", "ppg_only"]
    if args.epochs is not None:
        train += ["--epochs", str(args.epochs)]
    timings = {}
    try:
        timings["generate"] = run_step("1_generate", gen, stamps, digest, args.force)
        timings["pair_check"] = run_step("2_pair_check", [
            py, str(REPO_DIR / "verify_mesa_dataset.py"), "--xml-dir", cfg["preprocessing"]["xml_dir"],
            "--edf-dir", str(edf_dir), "--out", str(workdir / "paircheck_result.json")], stamps, digest, args.force)
        timings["extract"] = run_step("3_extract", [
            py, str(REPO_DIR / "extract_mesa_data.py"), "--config", args.config], stamps, digest, args.force)
        timings["verify_outputs"] = run_step("4_verify_outputs", [
            py, str(REPO_DIR / "verify_mesa_outputs.py"), "--base", cfg["preprocessing"]["out_dir"]], stamps,
            digest, args.force)
        timings["train"] = run_step("5_train", train, stamps, digest, args.force)
        run_dir = newest_run(save_dir, "ppg_only")
        checkpoint = run_dir / "checkpoints" / "best_model.pth"
        infer = [py, str(REPO_DIR / "inference_ppg_only.py"), "--config", args.config,
                 "--checkpoint", str(checkpoint)]
        infer_root = Path(cfg["inference"]["save_dir"])
        hdf5_dir, edf_out_dir = infer_root / "hdf5_mode", infer_root / "edf_mode"
        timings["infer_hdf5"] = run_step("6_infer_hdf5", infer + ["--out", str(hdf5_dir)], stamps, digest,
                                         args.force)
        edfs = sorted(edf_dir.glob("*.edf"))[: args.edf_nights]
        timings["infer_edf"] = sum(
            run_step(f"7_infer_edf_{edf.stem}", infer + ["--edf", str(edf), "--out", str(edf_out_dir)], stamps,
                     digest, args.force) for edf in edfs)
    except StepFailed as err:
        log.error("%s", err)
        return 1
    print_summary(run_dir, checkpoint, newest_inference(hdf5_dir), newest_inference(edf_out_dir), cfg, timings)
    return 0


def print_summary(run_dir: Path, checkpoint: Path, hdf5_out: Path | None, edf_out: Path | None, cfg: dict,
                  timings: dict) -> None:
    """Tell the user where everything is and what the SYNTHETIC test metrics were."""
    results = json.loads((run_dir / "results" / "test_results.json").read_text())
    lines = [
        "",
        "=" * 78,
        "Demo finished. All numbers below are on a SYNTHETIC cohort, not MESA.",
        "=" * 78,
        f"TensorBoard logs : tensorboard --logdir {cfg['output']['save_dir']}",
        f"Training run     : {run_dir}",
        f"Best checkpoint  : {checkpoint}",
    ]
    lines.append("Synthetic test set ({} nights): pooled accuracy {:.3f}, pooled kappa {:.3f}, median per-subject "
                 "kappa {:.3f}".format(results["n_test_subjects"], results["test_accuracy_overall"],
                                       results["test_kappa_overall"], results["test_median_kappa"]))
    for label, out in (("HDF5 inference", hdf5_out), ("EDF inference", edf_out)):
        if out is not None:
            lines.append(f"{label:<17}: {out}  (result.json, csv/<id>/<id>.csv, graph/<id>/<id>.png)")
    lines.append("Step seconds     : " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
