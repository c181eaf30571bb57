"""End to end: run_demo.py runs every script of the pipeline, as a user would, on a tiny synthetic cohort."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path) -> Path:
    """configs/config_demo.yaml with paths under tmp_path and sizes a 2-core CI finishes in about a minute."""
    text = (REPO / "configs" / "config_demo.yaml").read_text()
    replacements = {
        "windows_per_subject: 1200": "windows_per_subject: 40",
        "batch_size: 8                            # nights per forward pass": "batch_size: 4",
        "  num_workers: 2": "  num_workers: 0",
        "  workers: 0": "  workers: 2",
        "chunk_windows: 1200": "chunk_windows: 40",
        "num_epochs: 12": "num_epochs: 2",
        "n_subjects: 3": "n_subjects: 2",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    cfg = tiny_config(tmp_path)
    cmd = [sys.executable, str(REPO / "run_demo.py"), "--config", str(cfg), "--subjects", "10", "--hours", "0.4",
           "--edf-nights", "1"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "SYNTHETIC" in first.stdout and "Best checkpoint" in first.stdout

    demo = tmp_path / "demo"
    pair = json.loads((demo / "paircheck_result.json").read_text())
    assert pair["summary"]["matched"] == 10 and pair["summary"]["only_xml"] == 0
    for name in ("mesa_ppg_with_labels.h5", "mesa_real_ecg.h5", "mesa_subject_index.h5"):
        assert (demo / "mesa-x" / name).is_file()
    runs = list((demo / "outputs").glob("ppg_only_*"))
    assert len(runs) == 1
    results = json.loads((runs[0] / "results" / "test_results.json").read_text())
    assert results  # metric fields are checked in test_train.py; here: the file is valid JSON with content
    assert list((runs[0] / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    for mode in ("hdf5_mode", "edf_mode"):
        out = list((demo / "outputs" / "inference" / mode).glob("*/result.json"))
        assert out, f"no result.json for {mode}"
        csvs = list(out[0].parent.glob("csv/*/*.csv"))
        pngs = list(out[0].parent.glob("graph/*/*.png"))
        assert csvs and pngs, mode
    assert list((demo / "mesa-inference").glob("*/meta.json")), "EDF mode left no cache"

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already done") >= 7  # every step reused
    assert len(list((demo / "outputs").glob("ppg_only_*"))) == 1  # no second training run

    cfg.write_text(cfg.read_text().replace("n_subjects: 2", "n_subjects: 1"))  # an edited config reruns steps
    edited = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert "already done" not in edited.stderr
    assert "up to date" in edited.stdout + edited.stderr  # extraction itself sees nothing new to do


def test_demo_stops_on_a_failing_step(tmp_path):
    cfg = tiny_config(tmp_path)
    # An unwritable cohort location makes step 1 fail: the demo must stop there, naming the step.
    (tmp_path / "demo").write_text("not a folder")
    proc = subprocess.run([sys.executable, str(REPO / "run_demo.py"), "--config", str(cfg), "--subjects", "8",
                           "--hours", "0.2"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "step '1_generate' failed" in proc.stderr
