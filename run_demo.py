"""Run the whole SleepPPG-Net pipeline on a synthetic MESA-shaped cohort, exactly as a user would.

Steps (each one is a plain command of this repo, printed before it runs):
  1. make_synthetic_mesa.py    -> <cohort>/polysomnography/{edfs,annotations-events-nsrr}
  2. verify_mesa_dataset.py    -> <workdir>/paircheck_result.json
  3. extract_mesa_data.py      -> data.* HDF5 files (preprocessing.out_dir)
  4. verify_mesa_outputs.py
  5. train_ppg_only.py         -> output.save_dir/ppg_only_<timestamp>/ (TensorBoard logs, checkpoints, results;
                                  results/validation/report.md: the validation report of the test nights)
  6. inference_ppg_only.py     -> test subjects from the HDF5 (with labels: metrics, CSVs, hypnograms, validation/)
  7. inference_ppg_only.py --edf -> raw EDF nights (no labels), with the .npy cache, one command per night
Paths come from the config (default configs/config_demo.yaml); the cohort root is two folders above
`preprocessing.edf_dir`. The steps' own output goes to stderr (the terminal); stdout holds only the final
summary, so `python run_demo.py | tail` shows it and a closed pipe (`| head`) never breaks a step.

Rerunning: each finished step leaves a stamp in <workdir>/.demo_steps/ holding its command, the config's hash
and the files and folders it made; a rerun skips a step whose stamp matches and whose outputs still exist (an
edited config or a deleted output reruns the step, and every step after it), and the scripts themselves resume
(cohort files, extraction parts, caches). Other --subjects, --seed or --hours than the cohort was made with
stop the demo (exit 2) instead of adding other nights to it: delete <workdir> to start over with them. A
training step that was killed part-way continues from its `last.pth` in the same run folder (`--resume
RUN_DIR`, when that run's config is the demo's); a run folder that never saved a checkpoint is removed, so
TensorBoard shows no dead runs. A step that fails stops the demo with the step's name and its exit status or
the signal that killed it (SIGKILL: most often the out-of-memory killer, quoted with the memory the step needs).

What the demo's size trades (configs/config_demo.yaml; measured figures in the README): the cohort, the
pipeline and every output are full size (MESA-length nights, 1,200 windows = 10 h staged, MESA's files and
channels, raw EDF staged night by night, validation and test on whole nights); only training is cut down to
fit a laptop: 24 synthetic nights instead of MESA's 1,900, 4 epochs, and steps of two random 2-h crops instead
of eight whole nights (training.segment_windows; ~2.6 GB for the whole demo instead of ~10 GB), so the model
stages this cohort well above chance, not as well as it could (`--epochs N` trains longer).

Signals: each step runs in a session of its own, and run_demo passes on what it receives. Ctrl-C, or SIGINT,
SIGTERM, SIGHUP or SIGQUIT sent to run_demo's process alone (`kill -INT PID`), goes to the running step's whole
process group (the step and every process it started); run_demo waits up to STEP_STOP_GRACE_S for it to stop,
kills what is left with SIGKILL, says in one line which step was interrupted, and exits 128 + the signal's number.
No step outlives it. Ctrl-Z stops the step with run_demo; `fg` continues both.

Exit status: 0 done; 1 a step failed; 2 bad setup or arguments; 130 interrupted by Ctrl-C (SIGINT), 143 by SIGTERM
(129 SIGHUP, 131 SIGQUIT); rerun the same command to continue.
All metrics printed here are on SYNTHETIC data: they say the pipeline works, not how well it stages MESA.

Usage: python run_demo.py [--config configs/config_demo.yaml] [--subjects N] [--hours H] [--epochs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable

from sleepppg.children import ChildProcesses, exit_status, signal_name
from sleepppg.cli import (
    HelpFormatter,
    file_argument,
    non_negative_int,
    positive_int,
    positive_number,
    run_entry_point,
    setup_logging,
)
from sleepppg.config import adopt_recorded_parent_hash, load_config
from sleepppg.constants import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SETUP
from sleepppg.errors import ConfigError
from sleepppg.runio import json_safe, write_text_atomic

REPO_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = "configs/config_demo.yaml"
DEFAULT_SUBJECTS = 24  # 13 train, 4 validation, 7 test nights (30% of the IDs come from the SleepPPG-Net test list)
DEFAULT_EDF_NIGHTS = 2  # raw-EDF inference on the first few nights of the cohort (one is enough to show it)
GENERATE_WORKERS = 2  # synthetic nights written in parallel (< 0.5 GB each): ~2x faster on 2 cores
MIN_SUBJECTS = 8  # train, validation and test each need nights
MODEL = "ppg_only"
LAST_CHECKPOINT = "checkpoints/last.pth"  # train_ppg_only.py rewrites it after every epoch (--resume reads it)
TEST_RESULTS = "results/test_results.json"  # a training run is finished once this exists
VALIDATION_REPORT = "results/validation/report.md"  # the training run's validation report of its test nights
INFERENCE_RESULT = "result.json"  # an inference run folder is finished once this exists
STEP_STOP_GRACE_S = 30.0  # s a step may take to stop after a signal (training saves its checkpoint), then SIGKILL
# Peak memory (GB, PSS of the step's whole process tree) of each step with the shipped demo config on a 2-core VM,
# measured on 2026-11-26 (docs/benchmarks.md) and rounded up; quoted when a step is killed by SIGKILL.
STEP_MEMORY_GB = {"generate": 0.9, "pair_check": 0.1, "extract": 1.2, "verify_outputs": 0.2, "train": 2.7,
                  "infer": 1.7}

log = logging.getLogger("run_demo")


class StepFailed(RuntimeError):
    """A pipeline step exited non-zero or was killed by a signal."""


class Interrupted(RuntimeError):
    """A signal (Ctrl-C, SIGTERM, ...) stopped the demo at a step (args[0]: the step's name).

    Attributes:
        signum: the signal.
        started: whether the step had started (False: the signal came before it).
        killed: whether the step outlived STEP_STOP_GRACE_S and was killed with SIGKILL.
    """

    def __init__(self, step: str, signum: int = signal.SIGINT, started: bool = True, killed: bool = False):
        super().__init__(step)
        self.signum, self.started, self.killed = signum, started, killed

    def describe(self) -> str:
        """The one line the demo ends with."""
        where = "during" if self.started else "before"
        killed = f" (it did not stop within {STEP_STOP_GRACE_S:g} s and was killed)" if self.killed else ""
        return (f"interrupted by {signal_name(self.signum)} {where} step '{self.args[0]}'{killed}; run the same "
                "command again to continue from there")


@dataclasses.dataclass
class StepResult:
    name: str
    skipped: bool  # reused from an earlier run (stamp matched), not rerun
    seconds: float  # this run's wall time, or the earlier run's when skipped
    cpu_s: float | None  # CPU time (user + system) of the step's processes, children included
    outputs: list[str]  # the run folders the step made (training, inference)


@dataclasses.dataclass
class RunFolders:
    """The timestamped run folders a step makes: `<parent>/<pattern>`, finished once `marker` exists inside.
    A failed step's unfinished new folders are removed unless `keep(folder)` says they can be resumed."""
    parent: Path
    pattern: str
    marker: str
    keep: Callable[[Path], bool] = lambda folder: False

    def all(self) -> set[Path]:
        return {p for p in self.parent.glob(self.pattern) if p.is_dir()}

    def finished(self, folder: Path) -> bool:
        return (folder / self.marker).is_file()


@dataclasses.dataclass
class Context:
    stamps: Path  # <workdir>/.demo_steps
    config_digest: str  # sha256 of the config file's bytes: an edited config reruns the steps
    force: bool
    upstream_ran: bool = False  # a step ran in this invocation: every later step runs too (its inputs changed)
    children: ChildProcesses = dataclasses.field(default_factory=ChildProcesses)  # runs the steps, owns signals


# ----------------------------------------------------------------------------------------------------------
# Steps


def cohort_root(cfg: dict) -> Path:
    """The synthetic cohort's root: `preprocessing.edf_dir` is <root>/polysomnography/edfs."""
    return Path(cfg["preprocessing"]["edf_dir"]).parent.parent


def read_stamp(path: Path) -> dict:
    try:
        stamp = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def describe_exit(name: str, returncode: int, seconds: float, need: str, command: str) -> str:
    """One line saying how a step ended badly: its exit status, or the signal that killed it (for SIGKILL also
    the usual culprit and the memory the step needs)."""
    if returncode >= 0:
        return f"step '{name}' failed with exit status {returncode} after {seconds:.0f} s: {command}"
    why = (f" (most often the out-of-memory killer; this step needs about {need})"
           if -returncode == signal.SIGKILL else "")
    return f"step '{name}' was killed by {signal_name(-returncode)} after {seconds:.0f} s{why}: {command}"


def children_cpu_s() -> float:
    """User + system CPU seconds of every finished child process (and their waited-for children) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stamp_matches(stamp: dict, command: str, ctx: Context) -> bool:
    """Whether a step's stamp records this command and config, every file and folder it made still exists,
    and no earlier step ran in this invocation (a step whose inputs were just remade runs again)."""
    return (not ctx.force and not ctx.upstream_ran and stamp.get("command") == command
            and stamp.get("config_sha256") == ctx.config_digest
            and all(Path(p).exists() for p in stamp.get("outputs", [])))


def printable(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def run_step(name: str, cmd: list[str], ctx: Context, *, kind: str, folders: RunFolders | None = None,
             identity: list[str] | None = None, resumed: Path | None = None,
             made: list[Path] | None = None) -> StepResult:
    """Run one step unless its stamp says the same command, with the same config, already finished, what it
    made still exists, and no earlier step ran in this invocation.

    Args:
        kind: the step's entry in STEP_MEMORY_GB (quoted when the step is killed by SIGKILL).
        folders: the run folders the step makes; the new finished ones are recorded as its outputs, and a failed
            step's unfinished ones are removed unless `folders.keep` says they can be resumed.
        identity: the command the stamp records (default `cmd`): training that resumes a killed run adds
            `--resume RUN_DIR` to `cmd`, yet is the same step as the command without it.
        resumed: a run folder the step continues (recorded as an output, though not new).
        made: the files or folders a step without run folders writes (recorded as its outputs: deleted, the
            step runs again).
    Raises:
        StepFailed: the step exited non-zero or was killed by a signal.
        Interrupted: a signal reached the demo before or during the step, or the step exited 130 or by SIGINT.
    """
    if ctx.children.received:  # a signal came between steps: start no other
        raise Interrupted(name, ctx.children.received[0], started=False)
    stamp_path = ctx.stamps / f"{name}.json"
    shown, key = printable(cmd), printable(identity or cmd)
    stamp = read_stamp(stamp_path)
    if stamp_matches(stamp, key, ctx):
        log.info("[%s] done before (%.0f s), skipped: %s", name, stamp.get("seconds", 0), key)
        return StepResult(name, True, float(stamp.get("seconds", 0)), stamp.get("cpu_s"), stamp.get("outputs", []))

    log.info("[%s] $ %s", name, shown)
    ctx.upstream_ran = True
    before = folders.all() if folders else set()
    start, cpu_start = time.perf_counter(), children_cpu_s()
    returncode = None
    try:
        # The step's stdout goes to our stderr: stdout is kept for the summary (see the module docstring).
        returncode = ctx.children.run(cmd, stdout=sys.stderr)
    finally:
        seconds, cpu_s = time.perf_counter() - start, children_cpu_s() - cpu_start
        new = sorted((folders.all() - before) if folders else [])
        if folders and returncode != 0:
            for folder in new:
                if not folders.finished(folder) and not folders.keep(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    log.info("[%s] removed %s: the step stopped before it had anything to keep", name, folder)
    if ctx.children.received:
        raise Interrupted(name, ctx.children.received[0], killed=ctx.children.killed)
    if returncode in (EXIT_INTERRUPTED, -signal.SIGINT):
        raise Interrupted(name)
    if returncode != 0:
        need = f"{STEP_MEMORY_GB[kind]:.1f} GB with {DEFAULT_CONFIG}"
        raise StepFailed(describe_exit(name, returncode, seconds, need, shown))
    outputs = [str(p) for p in ([resumed] if resumed else []) + [f for f in new if folders.finished(f)]
               + [p for p in made or [] if Path(p).exists()]]
    write_text_atomic(stamp_path, json.dumps({"command": key, "config_sha256": ctx.config_digest,
                                              "seconds": round(seconds, 1), "cpu_s": round(cpu_s, 1),
                                              "outputs": outputs}, indent=1))
    log.info("[%s] done in %.0f s (CPU %.0f s)", name, seconds, cpu_s)
    return StepResult(name, False, seconds, cpu_s, outputs)


# ----------------------------------------------------------------------------------------------------------
# Training runs: resume a killed one, remove dead ones


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / LAST_CHECKPOINT).is_file()


def same_config(run_dir: Path, cfg: dict) -> bool:
    """Whether a run folder's checkpoints/config.json is `cfg` (the config as train_ppg_only.py validates it).
    A fine-tuning run writes its parent's sha256 into its config where the YAML has "": still the same."""
    try:
        saved = json.loads((run_dir / "checkpoints" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    now = json.loads(json.dumps(json_safe(cfg)))
    if isinstance(saved.get("training"), dict):
        adopt_recorded_parent_hash(now["training"], saved["training"])
    return saved == now


def prepare_training(runs: RunFolders, cfg: dict) -> Path | None:
    """Remove unfinished runs that never saved a checkpoint (nothing to resume; TensorBoard would list them)
    and return the newest unfinished run trained with `cfg` that has one, to be resumed; None if there is none."""
    resumable = None
    for run in sorted(runs.all()):
        if runs.finished(run):
            continue
        if not has_checkpoint(run):
            shutil.rmtree(run, ignore_errors=True)
            log.info("removed %s: a training run that stopped before its first checkpoint", run)
        elif same_config(run, cfg):
            resumable = run
    return resumable


def newest_finished(runs: RunFolders, outputs: list[str]) -> Path:
    """The training run of the step (its recorded output), else the newest finished run folder."""
    found = [Path(p) for p in outputs if runs.finished(Path(p))] or sorted(r for r in runs.all() if runs.finished(r))
    if not found:
        raise StepFailed(f"no finished {MODEL} run under {runs.parent}")
    return found[-1]


# ----------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, type=file_argument, help="YAML config (paths and sizes)")
    p.add_argument("--n-subjects", "--subjects", dest="subjects", type=int, default=DEFAULT_SUBJECTS,
                   help="synthetic nights to generate (--subjects is an older name)")
    p.add_argument("--hours", type=positive_number, default=None,
                   help="fixed night length in hours (default: lengths vary around 10 h, as in MESA)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: training.num_epochs)")
    p.add_argument("--edf-nights", type=non_negative_int, default=DEFAULT_EDF_NIGHTS,
                   help="nights staged in raw-EDF mode")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the synthetic cohort")
    p.add_argument("--force", action="store_true", help="rerun every step even if it finished before")
    return p.parse_args(argv)


def run_pipeline(args: argparse.Namespace, cfg: dict, ctx: Context, gen: list[str],
                 train: list[str]) -> tuple[list[StepResult], Path, Path]:
    """Run (or skip) every step in order. Returns (the steps, the training run folder, its best checkpoint).

    Raises:
        StepFailed, Interrupted: as `run_step`.
    """
    py = sys.executable
    workdir = ctx.stamps.parent
    edf_dir = Path(cfg["preprocessing"]["edf_dir"])
    runs = RunFolders(Path(cfg["output"]["save_dir"]), f"{MODEL}_*", TEST_RESULTS, keep=has_checkpoint)
    infer_root = Path(cfg["inference"]["save_dir"])
    hdf5_runs = RunFolders(infer_root / "hdf5_mode", "*", INFERENCE_RESULT)
    edf_runs = RunFolders(infer_root / "edf_mode", "*", INFERENCE_RESULT)
    steps = [run_step("1_generate", gen, ctx, kind="generate", made=[edf_dir, Path(cfg["preprocessing"]["xml_dir"])])]
    pair_json = workdir / "paircheck_result.json"
    steps.append(run_step("2_pair_check", [
        py, str(REPO_DIR / "verify_mesa_dataset.py"), "--xml-dir", cfg["preprocessing"]["xml_dir"],
        "--edf-dir", str(edf_dir), "--out", str(pair_json)], ctx, kind="pair_check", made=[pair_json]))
    steps.append(run_step("3_extract", [
        py, str(REPO_DIR / "extract_mesa_data.py"), "--config", args.config], ctx, kind="extract",
        made=[Path(cfg["data"][key]) for key in ("ppg_file", "ecg_file", "index_file")]))
    steps.append(run_step("4_verify_outputs", [
        py, str(REPO_DIR / "verify_mesa_outputs.py"), "--base", cfg["preprocessing"]["out_dir"]], ctx,
        kind="verify_outputs"))
    will_skip = stamp_matches(read_stamp(ctx.stamps / "5_train.json"), printable(train), ctx)
    resume = None if will_skip else prepare_training(runs, cfg)
    if resume is not None:
        log.info("continuing the unfinished training run %s from its last checkpoint", resume)
    steps.append(run_step("5_train", train + (["--resume", str(resume)] if resume else []), ctx, kind="train",
                          folders=runs, identity=train, resumed=resume))
    run_dir = newest_finished(runs, steps[-1].outputs)
    checkpoint = run_dir / "checkpoints" / "best_model.pth"
    infer = [py, str(REPO_DIR / "inference_ppg_only.py"), "--config", args.config, "--checkpoint", str(checkpoint)]
    steps.append(run_step("6_infer_hdf5", infer + ["--out", str(hdf5_runs.parent)], ctx, kind="infer",
                          folders=hdf5_runs))
    for edf in sorted(edf_dir.glob("*.edf"))[: args.edf_nights]:
        steps.append(run_step(f"7_infer_edf_{edf.stem}", infer + ["--edf", str(edf), "--out", str(edf_runs.parent)],
                              ctx, kind="infer", folders=edf_runs))
    return steps, run_dir, checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    overrides = {"training.num_epochs": args.epochs} if args.epochs is not None else {}
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_SETUP
    if args.subjects < MIN_SUBJECTS:
        log.error("--subjects must be at least %d (train, validation and test each need nights)", MIN_SUBJECTS)
        return EXIT_SETUP
    started = time.perf_counter()
    py = sys.executable
    ctx = Context(stamps=Path(cfg["preprocessing"]["out_dir"]).parent / ".demo_steps",
                  config_digest=hashlib.sha256(Path(args.config).read_bytes()).hexdigest(), force=args.force,
                  children=ChildProcesses(grace_s=STEP_STOP_GRACE_S))
    gen = [py, str(REPO_DIR / "make_synthetic_mesa.py"), "--out", str(cohort_root(cfg)),
           "--n-subjects", str(args.subjects), "--seed", str(args.seed), "--workers", str(GENERATE_WORKERS)]
    if args.hours is not None:
        gen += ["--hours", str(args.hours)]
    train = [py, str(REPO_DIR / "train_ppg_only.py"), "--config", args.config, "--model", MODEL]
    if args.epochs is not None:
        train += ["--epochs", str(args.epochs)]
    made_with = shlex.split(read_stamp(ctx.stamps / "1_generate.json").get("command", ""))[2:]
    if made_with and made_with != gen[2:] and any(Path(cfg["preprocessing"]["edf_dir"]).glob("*.edf")):
        log.error("the synthetic cohort in %s was made with other settings (%s); these (%s) would add other "
                  "nights to it. Delete %s to start over with them, or rerun with the earlier --subjects, --seed "
                  "and --hours", cohort_root(cfg), printable(made_with), printable(gen[2:]), ctx.stamps.parent)
        return EXIT_SETUP
    with ctx.children.forwarding():  # from here on, the demo's signals reach the running step (module docstring)
        try:
            steps, run_dir, checkpoint = run_pipeline(args, cfg, ctx, gen, train)
        except StepFailed as err:
            log.error("%s", err)
            return EXIT_FAILED
        except Interrupted as err:
            log.error("%s", err.describe())
            return exit_status(err.signum)
        if ctx.children.received:
            log.error("interrupted by %s after the last step", signal_name(ctx.children.received[0]))
            return exit_status(ctx.children.received[0])
        try:
            print_summary(run_dir, checkpoint, steps, cfg, time.perf_counter() - started)
        except BrokenPipeError:  # `python run_demo.py | head`: the reader stopped reading; the demo itself is done
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def print_summary(run_dir: Path, checkpoint: Path, steps: list[StepResult], cfg: dict, total_s: float) -> None:
    """Tell the user where everything is, what the SYNTHETIC test metrics were and what each step cost."""
    results = json.loads((run_dir / TEST_RESULTS).read_text())
    report = run_dir / VALIDATION_REPORT
    lines = [
        "",
        "=" * 78,
        "Demo finished. All numbers below are on a SYNTHETIC cohort, not MESA.",
        "=" * 78,
        f"TensorBoard logs : tensorboard --logdir {cfg['output']['save_dir']}",
        f"Training run     : {run_dir}",
        f"Best checkpoint  : {checkpoint}",
        "Synthetic test set ({} nights): pooled accuracy {:.3f}, pooled kappa {:.3f}, median per-subject kappa "
        "{:.3f}".format(results["n_test_subjects"], results["test_accuracy_overall"], results["test_kappa_overall"],
                        results["test_median_kappa"]),
        "Validation report: " + (f"{report}  (agreement, sleep statistics, Bland-Altman, calibration of the "
                                 "synthetic test nights)" if report.is_file() else
                                 "not written (the training log says why)"),
    ]
    for step in steps:
        if step.name.startswith(("6_", "7_")):
            label = "HDF5 inference" if step.name.startswith("6_") else "EDF inference"
            for out in step.outputs:
                extra = ", validation/report.md" if step.name.startswith("6_") else ""
                lines.append(f"{label:<17}: {out}  (result.json, csv/<id>/<id>.csv, graph/<id>/<id>.png{extra})")
    lines.append("Steps (wall seconds, CPU seconds of the step's processes):")
    for step in steps:
        cost = f"{step.seconds:.0f} s" + (f", CPU {step.cpu_s:.0f} s" if step.cpu_s is not None else "")
        lines.append(f"  {step.name:<28} " + (f"skipped (done), {cost} last time" if step.skipped else cost))
    ran = [s for s in steps if not s.skipped]
    lines.append(f"This run: {total_s:.0f} s, CPU {sum(s.cpu_s or 0 for s in ran):.0f} s, {len(ran)} step(s) run, "
                 f"{len(steps) - len(ran)} skipped")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
