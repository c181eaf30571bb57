"""The structure's guarantees, tried through the scripts as a user would meet them: IDs that could name a path
(`..`, a separator), links planted in an output tree, a user's own `.tmp` file beside our outputs, a folder
where an output file should be, and a full disk in inference (a real tmpfs where it can be mounted).

Each test also checks that nothing outside the output folders changed."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, make_cohort, run_cli, tmpfs_unavailable, write_edf, write_tiny_checkpoint

import inference_ppg_only as inf
from sleepppg.config import load_config
from sleepppg.constants import PPG_FILE

N_WIN = 40  # the tiny model's span: 20 min


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_model.pth", N_WIN)


def _config(tmp_path: Path, checkpoint: Path, **overrides) -> Path:
    cfg = load_config(REPO / "configs" / "config_demo.yaml", {
        "inference.cache_root": str(tmp_path / "cache"), "inference.save_dir": str(tmp_path / "out"),
        "inference.batch_size": 2, "gpu.mixed_precision": False, "inference.best_model": str(checkpoint),
        **overrides})
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ppg_table(path: Path, minutes: float = 10, fs: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(minutes * 60 * fs)) / fs
    ppg = 50 * np.sin(2 * np.pi * 1.1 * t) + 10 * np.sin(2 * np.pi * 0.25 * t) + rng.standard_normal(t.size)
    path.write_text("time,ppg\n" + "\n".join(f"{a:.5f},{b:.4f}" for a, b in zip(t, ppg)) + "\n")
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ids_that_could_name_a_path_stay_inside_the_output_folders(tmp_path, checkpoint):
    """A recording named '...csv' (its stem is '..') and one whose name holds a backslash: staged under safe
    IDs, every output and cache file inside its folder."""
    rec = tmp_path / "recordings"
    rec.mkdir()
    _ppg_table(rec / "...csv", seed=1)
    _ppg_table(rec / "ward\\bed7.csv", seed=2)
    _ppg_table(rec / "night01.csv", seed=3)
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    cfg = _config(tmp_path / "work", checkpoint)
    code = inf.main(["--config", str(cfg), "--out", str(tmp_path / "work" / "out"), "--device", "cpu",
                     "--ppg", str(rec)])
    assert code == 0
    (run_dir,) = (tmp_path / "work" / "out").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    ids = sorted(n["subject_id"] for n in result["nights"])
    assert ids == ["_..csv", "night01", "ward_bed7"]
    for sid in ids:
        assert (run_dir / "csv" / sid / f"{sid}.csv").is_file()
        assert (tmp_path / "work" / "cache" / sid / "meta.json").is_file()
    work = (tmp_path / "work").resolve()
    for path in [p for n in result["nights"] for p in n["outputs"].values() if p]:
        assert Path(path).resolve().is_relative_to(work)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.txt", "recordings", "work"]
    assert outside.read_text() == "untouched\n"


def test_a_link_planted_at_a_cache_folder_is_not_followed(tmp_path, checkpoint, caplog):
    """The cache only saves time: a link at a night's cache folder is refused (named in a warning), the night
    is staged from the recording, and nothing is written where the link points."""
    edf = write_edf(tmp_path / "edfs" / "mesa-sleep-0042.edf", 20)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("a user's folder\n")
    cache = tmp_path / "work" / "cache"
    cache.mkdir(parents=True)
    (cache / "0042").symlink_to(elsewhere, target_is_directory=True)
    cfg = _config(tmp_path / "work", checkpoint)
    code = inf.main(["--config", str(cfg), "--out", str(tmp_path / "work" / "out"), "--device", "cpu",
                     "--edf", str(edf)])
    assert code == 0
    (run_dir,) = (tmp_path / "work" / "out").iterdir()
    night = json.loads((run_dir / "result.json").read_text())["nights"][0]
    assert night["subject_id"] == "0042" and night["cache_used"] is False
    warned = [r.getMessage() for r in caplog.records if "cannot write the cache" in r.getMessage()]
    assert len(warned) == 1 and "0042" in warned[0] and "link" in warned[0], warned
    assert _tree(elsewhere) == {"keep.txt": b"a user's folder\n"}


def test_extraction_refuses_a_link_or_a_folder_at_an_output_file_and_keeps_a_users_tmp_files(tmp_path, capsys):
    edf_dir, xml_dir = make_cohort(tmp_path / "raw", ["0001", "0002"], minutes=6)
    target = tmp_path / "precious.h5"
    target.write_bytes(b"someone else's data")
    out = tmp_path / "out"
    out.mkdir()
    (out / PPG_FILE).symlink_to(target)
    (out / "notes.tmp").write_text("mine\n")
    (out / ".draft.tmp").write_text("mine too\n")
    assert run_cli(edf_dir, xml_dir, out) == 2
    err = capsys.readouterr().err
    assert PPG_FILE in err and len([line for line in err.splitlines() if line.strip()]) >= 1
    assert target.read_bytes() == b"someone else's data"
    (out / PPG_FILE).unlink()
    (out / PPG_FILE).mkdir()  # a folder where the file should be
    assert run_cli(edf_dir, xml_dir, out) == 2
    assert "folder" in capsys.readouterr().err
    (out / PPG_FILE).rmdir()
    assert run_cli(edf_dir, xml_dir, out) == 0  # with the obstacle gone the same command completes
    assert (out / PPG_FILE).is_file() and not (out / PPG_FILE).is_symlink()
    assert (out / "notes.tmp").read_text() == "mine\n" and (out / ".draft.tmp").read_text() == "mine too\n"



def test_a_full_disk_in_inference_stops_with_one_line_and_a_rerun_completes(tmp_path, checkpoint, capsys, caplog):
    reason = tmpfs_unavailable(tmp_path / "probe")
    if reason:
        pytest.skip(reason)
    edfs = [write_edf(tmp_path / "edfs" / f"mesa-sleep-00{k}1.edf", 20, seed=k) for k in range(4)]
    cfg = _config(tmp_path / "work", checkpoint)
    argv = ["--config", str(cfg), "--device", "cpu", "--edf", str(edfs[0].parent)]
    assert inf.main(argv + ["--out", str(tmp_path / "room")]) == 0  # how much a whole run writes
    needed = sum(p.stat().st_size for p in (tmp_path / "room").rglob("*") if p.is_file())
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={needed // 2 // 4096 * 4}k", "tmpfs", str(disk)],
                   check=True)  # room for about half of the run's outputs
    try:
        argv += ["--out", str(disk / "out")]
        assert inf.main(argv) == 2
        said = capsys.readouterr().err + caplog.text
        assert "disk full" in said, said
        assert not list(disk.rglob(".sleepppg-tmp-*"))  # no temporary left behind
        assert not list(disk.rglob("result.json"))  # nothing kept as if the run were complete
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        assert inf.main(argv) == 0
        runs = sorted(p for p in (disk / "out").iterdir() if (p / "result.json").is_file())
        assert len(json.loads((runs[-1] / "result.json").read_text())["nights"]) == 4
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_ids_that_differ_only_in_letter_case_never_share_outputs(tmp_path):
    from sleepppg.nights import unique_ids
    from sleepppg.pairing import pair_files

    assert unique_ids([Path("S1.csv"), Path("s1.csv"), Path("s1_2.csv")]) == ["S1", "s1_3", "s1_2"]
    edf_dir, xml_dir = tmp_path / "edfs", tmp_path / "xml"
    for folder in (edf_dir, xml_dir):
        folder.mkdir()
    for name in ("night_S1.edf", "night_s1.edf"):
        (edf_dir / name).write_bytes(b"0")
    for name in ("night_S1-nsrr.xml", "night_s1-nsrr.xml"):
        (xml_dir / name).write_text("<PSGAnnotation/>")
    (clash,) = pair_files(edf_dir, xml_dir, r"night_([a-z0-9]+)").id_clashes()
    assert sorted(clash["ids"]) == ["S1", "s1"] and "night_s1.edf" in clash["files"]
