"""Tests of run_demo.py: its step runner (stamps, failures, signals, Ctrl-C, dead run folders) on tiny
commands, and once, end to end, every script of the pipeline run as a user would on a tiny synthetic cohort,
with the training step killed part-way and resumed in the same run folder."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

import run_demo
from sleepppg.config import load_config

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY_EPOCHS = 4  # enough epochs after the first checkpoint to kill the training step part-way


def tiny_config(tmp_path: Path, **overrides) -> Path:
    """configs/config_demo.yaml with relative paths (under the working directory) and sizes a 2-core CI runs
    in well under a minute: 40-window nights (trained on 10-window crops, as the demo trains on crops), a few
    epochs, no worker processes."""
    cfg = yaml.safe_load((REPO / "configs" / "config_demo.yaml").read_text())
    sizes = {"data.windows_per_subject": 40, "data.num_workers": 0, "data.batch_size": 2,
             "training.segment_windows": 10,
             "preprocessing.workers": 1, "preprocessing.chunk_windows": 40, "training.num_epochs": TINY_EPOCHS,
             "output.save_frequency": 100, "output.save_intermediate": False, "inference.n_subjects": 1,
             "inference.batch_size": 2, **overrides}
    for dotted, value in sizes.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def context(tmp_path: Path, digest: str = "abc", force: bool = False) -> run_demo.Context:
    return run_demo.Context(stamps=tmp_path / ".demo_steps", config_digest=digest, force=force)


def py_cmd(code: str) -> list[str]:
    return [PY, "-c", code]


# ----------------------------------------------------------------------------------------------------------
# The step runner


def test_stamp_skips_a_finished_step_until_the_config_or_its_folders_change(tmp_path):
    out = tmp_path / "runs"
    folders = run_demo.RunFolders(out, "run_*", "done.txt")
    make = py_cmd(f"import pathlib, time; p = pathlib.Path({str(out)!r}) / ('run_%d' % time.time_ns()); "
                  "p.mkdir(parents=True); (p / 'done.txt').write_text('x'); sum(range(3_000_000))")
    first = run_demo.run_step("5_x", make, context(tmp_path), kind="train", folders=folders)
    assert not first.skipped and len(first.outputs) == 1 and Path(first.outputs[0]).parent == out
    stamp = json.loads((tmp_path / ".demo_steps" / "5_x.json").read_text())
    assert stamp["outputs"] == first.outputs and stamp["config_sha256"] == "abc" and stamp["seconds"] >= 0
    assert 0 < first.cpu_s < 60 and stamp["cpu_s"] == round(first.cpu_s, 1)  # a Python start-up and a sum

    again = run_demo.run_step("5_x", make, context(tmp_path), kind="train", folders=folders)
    assert again.skipped and again.outputs == first.outputs and again.seconds == stamp["seconds"]
    assert len(folders.all()) == 1  # not rerun

    edited = run_demo.run_step("5_x", make, context(tmp_path, digest="edited"), kind="train", folders=folders)
    assert not edited.skipped and len(folders.all()) == 2

    for folder in folders.all():  # a user deleted the outputs: the step runs again
        (folder / "done.txt").unlink()
        folder.rmdir()
    gone = run_demo.run_step("5_x", make, context(tmp_path, digest="edited"), kind="train", folders=folders)
    assert not gone.skipped and len(folders.all()) == 1
    forced = run_demo.run_step("5_x", make, context(tmp_path, digest="edited", force=True), kind="train",
                               folders=folders)
    assert not forced.skipped and len(folders.all()) == 2


def test_a_failing_step_names_itself_and_its_exit_status(tmp_path):
    with pytest.raises(run_demo.StepFailed, match=r"step '3_x' failed with exit status 3 after \d+ s: .*exit\(3\)"):
        run_demo.run_step("3_x", py_cmd("import sys; sys.exit(3)"), context(tmp_path), kind="extract")
    assert not (tmp_path / ".demo_steps" / "3_x.json").exists()  # no stamp: the next run tries again


def test_a_step_killed_by_sigkill_names_the_signal_and_the_memory_it_needs(tmp_path):
    kill_self = py_cmd("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    with pytest.raises(run_demo.StepFailed) as err:
        run_demo.run_step("5_train", kill_self, context(tmp_path), kind="train")
    text = str(err.value)
    assert "step '5_train' was killed by SIGKILL" in text
    need = run_demo.STEP_MEMORY_GB["train"]
    assert f"most often the out-of-memory killer; this step needs about {need:.1f} GB with configs/config_demo.yaml" \
        in text
    assert "its processes had reached" not in text  # the demo times its steps; bench/memory.py measures memory
    with pytest.raises(run_demo.StepFailed, match="killed by SIGTERM after"):
        run_demo.run_step("6_x", py_cmd("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"),
                          context(tmp_path), kind="infer")


def test_describe_exit_names_the_signal_and_the_memory_needed():
    text = run_demo.describe_exit("5_train", -signal.SIGKILL, 12.4, "3.0 GB", "python train_ppg_only.py")
    assert text == ("step '5_train' was killed by SIGKILL after 12 s (most often the out-of-memory killer; this "
                    "step needs about 3.0 GB): python train_ppg_only.py")
    assert run_demo.describe_exit("x", 4, 1.0, "", "cmd") == "step 'x' failed with exit status 4 after 1 s: cmd"
    assert run_demo.describe_exit("x", 1, 2.0, "", "cmd") == "step 'x' failed with exit status 1 after 2 s: cmd"
    assert run_demo.describe_exit("x", -signal.SIGTERM, 2.0, "", "cmd") == ("step 'x' was killed by SIGTERM after "
                                                                           "2 s: cmd")


def test_an_interrupted_step_raises_interrupted(tmp_path):
    # the second step dies of SIGINT itself (its default action set first: a test run in the background of a
    # shell inherits SIGINT ignored)
    for code in ("import sys; sys.exit(130)",
                 "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGINT)"):
        with pytest.raises(run_demo.Interrupted) as err:
            run_demo.run_step("5_train", py_cmd(code), context(tmp_path), kind="train")
        assert err.value.args == ("5_train",)


def test_a_failed_step_removes_its_unfinished_folders_unless_they_can_be_resumed(tmp_path):
    runs = run_demo.RunFolders(tmp_path / "out", "ppg_only_*", run_demo.TEST_RESULTS, keep=run_demo.has_checkpoint)
    old = tmp_path / "out" / "ppg_only_1"
    old.mkdir(parents=True)  # an earlier folder is not this step's to remove
    dead = py_cmd(f"import pathlib, sys; pathlib.Path({str(tmp_path / 'out' / 'ppg_only_2')!r}).mkdir(); "
                  "sys.exit(1)")
    with pytest.raises(run_demo.StepFailed):
        run_demo.run_step("5_train", dead, context(tmp_path), kind="train", folders=runs)
    assert runs.all() == {old}
    ckpt = tmp_path / "out" / "ppg_only_3" / run_demo.LAST_CHECKPOINT
    resumable = py_cmd(f"import pathlib, sys; p = pathlib.Path({str(ckpt)!r}); p.parent.mkdir(parents=True); "
                       "p.write_bytes(b'x'); sys.exit(1)")
    with pytest.raises(run_demo.StepFailed):
        run_demo.run_step("5_train", resumable, context(tmp_path), kind="train", folders=runs)
    assert runs.all() == {old, ckpt.parents[1]}


def test_prepare_training_resumes_the_run_of_the_same_config_and_removes_dead_runs(tmp_path):
    cfg = load_config(REPO / "configs" / "config_demo.yaml", {"output.save_dir": str(tmp_path)})
    other = load_config(REPO / "configs" / "config_demo.yaml", {"output.save_dir": str(tmp_path),
                                                                "training.num_epochs": 99})
    runs = run_demo.RunFolders(tmp_path, "ppg_only_*", run_demo.TEST_RESULTS, keep=run_demo.has_checkpoint)

    def make(name: str, config: dict | None, checkpoint: bool, finished: bool) -> Path:
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "results").mkdir()
        if config is not None:
            (run / "checkpoints" / "config.json").write_text(json.dumps(config))
        if checkpoint:
            (run / run_demo.LAST_CHECKPOINT).write_bytes(b"x")
        if finished:
            (run / run_demo.TEST_RESULTS).write_text("{}")
        return run

    done = make("ppg_only_20260101_000000", cfg, True, True)
    dead = make("ppg_only_20260101_000001", cfg, False, False)
    empty = make("ppg_only_20260101_000002", None, False, False)
    same = make("ppg_only_20260101_000003", cfg, True, False)
    newer_other = make("ppg_only_20260101_000004", other, True, False)
    assert run_demo.same_config(same, cfg) and not run_demo.same_config(newer_other, cfg)
    # a fine-tuning run wrote its parent's sha256 into its config; the YAML still has "": the same config
    tuned = load_config(REPO / "configs" / "config_demo.yaml", {"output.save_dir": str(tmp_path),
                                                                "training.init_from": "parent.pth"})
    saved = json.loads(json.dumps(run_demo.json_safe(tuned)))
    saved["training"]["init_from_sha256"] = "ab" * 32
    (tmp_path / "tuned" / "checkpoints").mkdir(parents=True)
    (tmp_path / "tuned" / "checkpoints" / "config.json").write_text(json.dumps(saved))
    assert run_demo.same_config(tmp_path / "tuned", tuned) and not run_demo.same_config(tmp_path / "tuned", cfg)
    assert run_demo.prepare_training(runs, cfg) == same
    assert runs.all() == {done, same, newer_other}
    assert not dead.exists() and not empty.exists()


# A stand-in for each script of the pipeline: it logs its call and writes what the next step reads, in
# milliseconds, so the demo's skip/rerun logic can be tested on whole runs. The script named by STUB_HANG stands
# in for a long step instead: it starts a grandchild (`sleep`), writes both pids to STUB_PIDS and sleeps; it
# exits 130 on Ctrl-C, as the real scripts do, or with STUB_STUBBORN ignores SIGINT and SIGTERM (the grandchild
# too).
STUB = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from sleepppg.config import load_config
from sleepppg.runio import make_run_dir, write_json
name, a = Path(sys.argv[0]).stem, sys.argv[1:]
arg = lambda flag: a[a.index(flag) + 1]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(name + "\\n")
if os.environ.get("STUB_HANG") == name:
    if os.environ.get("STUB_STUBBORN"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        grandchild = subprocess.Popen(["sleep", "300"])
        pids = Path(os.environ["STUB_PIDS"])
        pids.with_suffix(".tmp").write_text(f"{{os.getpid()}} {{grandchild.pid}}")
        os.replace(pids.with_suffix(".tmp"), pids)
        time.sleep(300)
    except KeyboardInterrupt:
        sys.exit(130)
cfg = load_config(arg("--config")) if "--config" in a else None
if name == "make_synthetic_mesa":
    for sub, suffix in (("edfs", ".edf"), ("annotations-events-nsrr", "-nsrr.xml")):
        folder = Path(arg("--out")) / "polysomnography" / sub
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(int(arg("--n-subjects"))):
            (folder / f"mesa-sleep-{{i:04d}}{{suffix}}").touch()
elif name == "verify_mesa_dataset":
    write_json(arg("--out"), {{}})
elif name == "extract_mesa_data":
    for key in ("ppg_file", "ecg_file", "index_file"):
        Path(cfg["data"][key]).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg["data"][key]).touch()
elif name == "train_ppg_only":
    if not Path(cfg["data"]["ppg_file"]).exists():
        sys.exit(2)
    run = Path(arg("--resume")) if "--resume" in a else make_run_dir(cfg["output"]["save_dir"], "ppg_only_")
    write_json(run / "checkpoints" / "config.json", cfg)
    (run / "checkpoints" / "last.pth").write_bytes(b"x")
    write_json(run / "results" / "test_results.json", {{"n_test_subjects": 1, "test_accuracy_overall": 0.5,
                                                          "test_kappa_overall": 0.3, "test_median_kappa": 0.3}})
elif name == "inference_ppg_only":
    write_json(make_run_dir(arg("--out")) / "result.json", {{}})
"""


def write_stubs(tmp_path: Path) -> Path:
    """The stand-in scripts, in tmp_path/stubs (returned)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for script in ("make_synthetic_mesa", "verify_mesa_dataset", "extract_mesa_data", "verify_mesa_outputs",
                   "train_ppg_only", "inference_ppg_only"):
        (stubs / f"{script}.py").write_text(STUB.format(repo=str(REPO)))
    return stubs


@pytest.fixture
def stub_demo(tmp_path, monkeypatch):
    """run_demo.main on the stand-in scripts, in tmp_path; returns (run(*args) -> exit status, calls() ->
    the scripts that ran since the last call)."""
    stubs = write_stubs(tmp_path)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setattr(run_demo, "REPO_DIR", stubs)
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path)

    def run(*args: str) -> int:
        return run_demo.main(["--config", str(cfg), "--subjects", "8", "--edf-nights", "1", *args])

    def calls() -> list[str]:
        text = log.read_text() if log.exists() else ""
        log.write_text("")
        return text.split()

    return run, calls


ALL_STEPS = ["make_synthetic_mesa", "verify_mesa_dataset", "extract_mesa_data", "verify_mesa_outputs",
             "train_ppg_only", "inference_ppg_only", "inference_ppg_only"]


def test_a_step_that_reruns_reruns_every_step_after_it(stub_demo):
    run, calls = stub_demo
    assert run() == 0 and calls() == ALL_STEPS
    assert run() == 0 and calls() == []  # all done
    Path("demo/paircheck_result.json").unlink()  # a step's own output deleted: it and every later step run
    assert run() == 0 and calls() == ALL_STEPS[1:]
    for name in ("mesa_ppg_with_labels.h5", "mesa_real_ecg.h5", "mesa_subject_index.h5"):
        Path("demo/mesa-x", name).unlink()
    assert run() == 0 and calls() == ALL_STEPS[2:]
    assert run("--epochs", "2") == 0 and calls() == ALL_STEPS[4:]  # training changed: inference reruns too


def test_other_cohort_settings_stop_before_mixing_two_cohorts(stub_demo, caplog):
    run, calls = stub_demo
    assert run() == 0 and calls() == ALL_STEPS
    for changed in (["--subjects", "12"], ["--seed", "3"], ["--hours", "1"]):
        assert run(*changed) == 2  # (a later --subjects wins over run's 8)
        assert "was made with other settings" in caplog.text and calls() == []
    for bad in (["--hours", "nan"], ["--hours", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as err:
            run(*bad)
        assert err.value.code == 2


def test_force_reruns_every_step_but_still_cleans_and_resumes_training(stub_demo):
    run, calls = stub_demo
    assert run() == 0 and calls() == ALL_STEPS
    dead = Path("demo/outputs/ppg_only_20200101_000000")
    (dead / "checkpoints").mkdir(parents=True)
    killed = Path("demo/outputs/ppg_only_20200101_000001")
    (killed / "checkpoints").mkdir(parents=True)
    (killed / run_demo.LAST_CHECKPOINT).write_bytes(b"x")
    (killed / "checkpoints" / "config.json").write_text(json.dumps(run_demo.json_safe(load_config("tiny.yaml"))))
    assert run("--force") == 0 and calls() == ALL_STEPS
    assert not dead.exists()  # no checkpoint: removed
    assert (killed / run_demo.TEST_RESULTS).is_file()  # the killed run was continued, not left behind

# ----------------------------------------------------------------------------------------------------------
# Signals sent to run_demo's process alone (not its process group), as `kill -INT PID` does

# run_demo.main in a process of its own on the stand-in scripts, with a short grace period for a stuck step
DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import run_demo
run_demo.REPO_DIR = Path({stubs!r})
run_demo.STEP_STOP_GRACE_S = 1.0
sys.exit(run_demo.main(["--config", {cfg!r}, "--subjects", "8", "--edf-nights", "1"]))
"""


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Whether process `pid` has ended (a zombie left for a non-reaping init counts as ended)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _wait_for_status(pid: int, wanted: bool, timeout_s: float = 30.0) -> None:
    """Wait until process `pid` is stopped (`wanted` True) or not stopped (False)."""
    deadline = time.monotonic() + timeout_s
    while (psutil.Process(pid).status() == psutil.STATUS_STOPPED) != wanted:
        assert time.monotonic() < deadline, f"process {pid} is {psutil.Process(pid).status()}"
        time.sleep(0.05)


def _start_demo_on_a_hanging_training_step(tmp_path: Path, stubborn: bool = False):
    """run_demo (its own process) on the stand-ins, the training stand-in hanging; returns (the demo's Popen,
    the training stand-in's pid, its grandchild's pid) once the training step is running."""
    stubs, cfg, pids = write_stubs(tmp_path), tiny_config(tmp_path), tmp_path / "train.pids"
    env = {**os.environ, "STUB_LOG": str(tmp_path / "calls.log"), "STUB_HANG": "train_ppg_only",
           "STUB_PIDS": str(pids)}
    if stubborn:
        env["STUB_STUBBORN"] = "1"
    driver = DRIVER.format(repo=str(REPO), stubs=str(stubs), cfg=str(cfg))
    demo = subprocess.Popen([PY, "-c", driver], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not pids.exists():
        if demo.poll() is not None or time.monotonic() > deadline:
            demo.kill()
            raise AssertionError(f"the training stand-in never started: {demo.communicate()}")
        time.sleep(0.05)
    step_pid, grandchild_pid = map(int, pids.read_text().split())
    return demo, step_pid, grandchild_pid


@pytest.mark.parametrize("signum, stubborn", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                              (signal.SIGINT, True)])
def test_a_signal_to_run_demo_alone_stops_the_running_step_and_everything_it_started(tmp_path, signum, stubborn):
    demo, step_pid, grandchild_pid = _start_demo_on_a_hanging_training_step(tmp_path, stubborn)
    try:
        os.kill(demo.pid, signum)  # run_demo's pid only: its children hear of it from run_demo
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 128 + signum  # 130 for SIGINT, 143 for SIGTERM
    assert _gone(step_pid) and _gone(grandchild_pid)  # no child outlives run_demo, not even a stubborn one
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    after_start = lines[next(i for i, line in enumerate(lines) if "[5_train] $" in line) + 1:]
    assert len(after_start) == 1  # one line says what happened
    name = signal.Signals(signum).name
    assert f"interrupted by {name} during step '5_train'" in after_start[0]
    assert after_start[0].endswith("run the same command again to continue from there")
    assert ("(it did not stop within 1 s and was killed)" in after_start[0]) == stubborn


def test_ctrl_z_stops_the_step_with_run_demo_and_a_continue_resumes_both(tmp_path):
    demo, step_pid, grandchild_pid = _start_demo_on_a_hanging_training_step(tmp_path)
    try:
        os.kill(demo.pid, signal.SIGTSTP)  # Ctrl-Z
        for pid in (demo.pid, step_pid, grandchild_pid):
            _wait_for_status(pid, True)
        os.kill(demo.pid, signal.SIGCONT)  # `fg`
        for pid in (demo.pid, step_pid, grandchild_pid):
            _wait_for_status(pid, False)
        os.kill(demo.pid, signal.SIGINT)
        demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130 and _gone(step_pid) and _gone(grandchild_pid)


def test_bad_setup_exits_2(tmp_path, caplog):
    assert run_demo.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in caplog.text
    assert run_demo.main(["--config", str(tiny_config(tmp_path)), "--subjects", "3"]) == 2
    assert "--subjects must be at least 8" in caplog.text
    with pytest.raises(SystemExit) as err:
        run_demo.main(["--epochs", "many"])
    assert err.value.code == 2


def test_demo_stops_on_a_failing_step(tmp_path):
    cfg = tiny_config(tmp_path)
    # An unwritable cohort location makes step 1 fail: the demo must stop there, naming the step.
    (tmp_path / "demo").write_text("not a folder")
    proc = subprocess.run([PY, str(REPO / "run_demo.py"), "--config", str(cfg), "--subjects", "8",
                           "--hours", "0.2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "step '1_generate' failed with exit status" in proc.stderr
    assert proc.stdout == ""  # no summary


# ----------------------------------------------------------------------------------------------------------
# The whole pipeline, once


def _descendants(pid: int) -> list[int]:
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_training_after_its_first_checkpoint(demo: subprocess.Popen, save_dir: Path, timeout_s: float) -> Path:
    """Wait for the first `last.pth`, then SIGKILL the train_ppg_only.py process (as the OOM killer would)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and demo.poll() is None:
        found = list(save_dir.glob("ppg_only_*/checkpoints/last.pth"))
        if found:
            trainers = [p for p in _descendants(demo.pid) if "train_ppg_only.py" in _cmdline(p)]
            assert trainers, "a checkpoint exists but no training process is running"
            for pid in trainers:
                os.kill(pid, signal.SIGKILL)
            return found[0].parents[1]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint within {timeout_s} s (demo exit status {demo.poll()})")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the training process")
def test_demo_end_to_end_training_killed_then_resumed(tmp_path):
    cfg = tiny_config(tmp_path)
    cmd = [PY, str(REPO / "run_demo.py"), "--config", str(cfg), "--subjects", "8", "--hours", "0.35",
           "--edf-nights", "1"]
    demo_dir, save_dir = tmp_path / "demo", tmp_path / "demo" / "outputs"

    # 1. First run: the training step is killed after its first epoch's checkpoint.
    with open(tmp_path / "first.out", "w") as out, open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=err)
        killed_run = _kill_training_after_its_first_checkpoint(first, save_dir, timeout_s=1800)
        assert first.wait(timeout=120) == 1
    stderr = (tmp_path / "first.err").read_text()
    assert "step '5_train' was killed by SIGKILL" in stderr and "most often the out-of-memory killer" in stderr
    assert (tmp_path / "first.out").read_text() == ""  # no summary after a failed step

    # 2. Rerun, its stdout a pipe closed at once (`| head`): the same run folder continues and finishes.
    second = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second.stdout.close()
    _, stderr = second.communicate(timeout=1800)  # generous: a shared 2-core CI box can be 10x slower
    assert second.returncode == 0, stderr[-5000:]
    assert "Traceback" not in stderr
    assert f"continuing the unfinished training run {killed_run.relative_to(tmp_path)}" in stderr
    assert sorted(save_dir.glob("ppg_only_*")) == [killed_run]  # no second run, no dead run for TensorBoard
    for step in ("1_generate", "2_pair_check", "3_extract", "4_verify_outputs"):
        assert f"[{step}] done before" in stderr
    results = json.loads((killed_run / "results" / "test_results.json").read_text())
    assert results["epochs_trained"] == TINY_EPOCHS
    assert len(results["training_history"]["train_losses"]) == TINY_EPOCHS  # epochs 2.. appended after epoch 1
    assert results["n_test_subjects"] >= 2 and 0 <= results["test_accuracy_overall"] <= 1
    assert math.isfinite(results["test_kappa_overall"]) and -1 <= results["test_kappa_overall"] <= 1
    assert len(list((killed_run / "logs").rglob("events.out.tfevents.*"))) >= 1

    pair = json.loads((demo_dir / "paircheck_result.json").read_text())
    assert pair["summary"]["matched"] == 8 and pair["summary"]["only_xml"] == 0 == pair["summary"]["only_edf"]

    # 3. Rerun again: every step skipped, and the summary lists every inference folder.
    third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    summary = third.stdout
    assert "SYNTHETIC" in summary and f"Training run     : {killed_run.relative_to(tmp_path)}" in summary
    assert f"Validation report: {killed_run.relative_to(tmp_path) / run_demo.VALIDATION_REPORT}" in summary
    assert (killed_run / run_demo.VALIDATION_REPORT).is_file()
    assert summary.count("skipped (done)") == 7 and "0 step(s) run, 7 skipped" in summary
    assert sorted(save_dir.glob("ppg_only_*")) == [killed_run]
    for mode, nights in (("hdf5_mode", 1), ("edf_mode", 1)):
        (out,) = (save_dir / "inference" / mode).iterdir()
        assert f"{out.relative_to(tmp_path)}  (result.json" in summary
        result = json.loads((out / "result.json").read_text())
        assert result["n_nights_staged"] == nights == len(result["nights"]) and result["n_nights_failed"] == 0
        assert result["mode"] == ("HDF5" if mode == "hdf5_mode" else "EDF")
        assert len(list(out.glob("csv/*/*.csv"))) == nights and list(out.glob("graph/*/*.png"))
    assert len(list((demo_dir / "mesa-inference").glob("*/meta.json"))) == 1  # the EDF night's cache


def test_summary_says_where_the_validation_report_is(tmp_path, capsys):
    run_dir = tmp_path / "ppg_only_1"
    (run_dir / "results").mkdir(parents=True)
    (run_dir / run_demo.TEST_RESULTS).write_text(json.dumps({"n_test_subjects": 3, "test_accuracy_overall": 0.5,
                                                             "test_kappa_overall": 0.2, "test_median_kappa": 0.1}))
    cfg = {"output": {"save_dir": str(tmp_path)}}
    run_demo.print_summary(run_dir, run_dir / "best.pth", [], cfg, 1.0)
    assert "Validation report: not written" in capsys.readouterr().out
    (run_dir / run_demo.VALIDATION_REPORT).parent.mkdir()
    (run_dir / run_demo.VALIDATION_REPORT).write_text("# Validation report")
    run_demo.print_summary(run_dir, run_dir / "best.pth", [], cfg, 1.0)
    assert f"Validation report: {run_dir / run_demo.VALIDATION_REPORT}  (agreement" in capsys.readouterr().out
