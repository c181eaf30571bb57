"""Tests for multimodal_dataset_aligned: the split, item contents, worker safety, label loading, errors."""
import h5py
import numpy as np
import pytest
import torch
from helpers import REPO, write_processed

import multimodal_dataset_aligned as mda
from multimodal_dataset_aligned import (
    SLEEPPPG_TEST_SUBJECTS,
    MultiModalSleepDataset,
    PPGOnlyDataset,
    data_paths_from_config,
    get_dataloaders,
    load_labels,
    make_split,
    split_subjects,
)
from sleepppg import crops
from sleepppg.config import load_config
from sleepppg.constants import SAMPLES_PER_WINDOW
from sleepppg.ids import sleepppg_test_subjects

W = 16  # windows per night: tiny nights keep the tests fast


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 subjects, the first 4 of the SleepPPG-Net test list among them; one test subject and one other
    subject are a window short (invalid)."""
    test_ids = sleepppg_test_subjects()[:4]
    out = write_processed(tmp_path_factory.mktemp("processed"), n_subjects=12, windows_per_subject=W, n_test=4,
                          short_subjects=(test_ids[1], "9003"))
    out["test_ids"], out["short"] = test_ids, (test_ids[1], "9003")
    return out


def _paths(data):
    return {k: data[k] for k in ("ppg", "ecg", "index")}


def _raw_rows(path, key, sid):
    with h5py.File(path, "r") as f:
        ids = f["subject_ids"][()]
        return f[key][()][ids == sid.encode()]


def test_test_list_is_the_204_ids():
    assert len(SLEEPPPG_TEST_SUBJECTS) == 204 and len(set(SLEEPPPG_TEST_SUBJECTS)) == 204
    assert SLEEPPPG_TEST_SUBJECTS[:3] == ["0001", "0021", "0033"]


def test_split_reproduces_fixed_test_ids(data):
    split = make_split(data["index"], W, use_sleepppg_test_set=True, seed=42)
    expected_test = [s for s in data["test_ids"] if s not in data["short"]]
    assert split.test == expected_test  # the valid test IDs, in the paper's order
    assert set(split.valid) == set(data["subjects"]) - set(data["short"])
    assert split.valid == sorted(split.valid)
    assert not set(split.train) & set(split.val)
    assert set(split.train) | set(split.val) == set(split.valid) - set(expected_test)
    assert len(split.val) == 2 and len(split.train) == 5  # 7 non-test subjects, 20% to val (rounded up)
    assert data["short"][0] in split.missing_test and len(split.missing_test) == 204 - len(expected_test)
    # deterministic by seed, and the seed matters
    assert make_split(data["index"], W, True, 42) == split
    assert any(make_split(data["index"], W, True, s).val != split.val for s in range(5))


def test_split_matches_sklearn_reference_recipe():
    from sklearn.model_selection import train_test_split
    valid = [f"{i:04d}" for i in range(2, 40)]  # "0021" and "0033" are test IDs
    train, val, test = split_subjects(valid_subjects=valid, use_sleepppg_test_set=True, seed=42)
    assert test == ["0021", "0033"]
    rest = [s for s in valid if s not in test]
    assert (train, val) == tuple(train_test_split(rest, test_size=0.2, random_state=42))


def test_random_split_mode(data):
    split = make_split(data["index"], W, use_sleepppg_test_set=False, seed=7)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(p) for p in parts) == len(split.valid) == 10
    assert set().union(*parts) == set(split.valid)
    assert len(split.test) == 2 and len(split.val) == 2 and len(split.train) == 6  # 80/20 then 80/20
    assert split.missing_test == []
    assert make_split(data["index"], W, False, 7) == split


def test_too_few_subjects_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too few subjects"):
        split_subjects(["0001", "0021", "9000"], use_sleepppg_test_set=True)  # one left for train/val
    with pytest.raises(ValueError, match="too few subjects"):
        split_subjects(["9000", "9001"], use_sleepppg_test_set=False)
    small = write_processed(tmp_path, n_subjects=3, windows_per_subject=W, n_test=2)
    with pytest.raises(ValueError, match="too few subjects"):
        PPGOnlyDataset(small, windows_per_subject=W)  # folder form of data_path


def test_items_equal_raw_hdf5_slices(data):
    for split in ("train", "val", "test"):
        ds = PPGOnlyDataset(_paths(data), split=split, windows_per_subject=W)
        assert len(ds) == len(ds.subjects) > 0
        for i, sid in enumerate(ds.subjects):
            ppg_1T, labels_W = ds[i]
            assert ppg_1T.shape == (1, W * SAMPLES_PER_WINDOW) and ppg_1T.dtype == torch.float32
            assert labels_W.shape == (W,) and labels_W.dtype == torch.int64
            np.testing.assert_array_equal(ppg_1T.numpy()[0], _raw_rows(data["ppg"], "ppg", sid).reshape(-1))
            np.testing.assert_array_equal(labels_W.numpy(), _raw_rows(data["ppg"], "labels", sid))
    assert ds.subjects == make_split(data["index"], W).test


def test_multimodal_items_and_return_index(data):
    ds = MultiModalSleepDataset(_paths(data), split="train", windows_per_subject=W, return_index=True)
    for i in (0, len(ds) - 1):
        ppg_1T, ecg_1T, labels_W, idx = ds[i]
        sid = ds.subjects[i]
        assert idx == i and ecg_1T.shape == ppg_1T.shape == (1, W * SAMPLES_PER_WINDOW)
        np.testing.assert_array_equal(ecg_1T.numpy()[0], _raw_rows(data["ecg"], "ecg", sid).reshape(-1))
        np.testing.assert_array_equal(ppg_1T.numpy()[0], _raw_rows(data["ppg"], "ppg", sid).reshape(-1))
        np.testing.assert_array_equal(labels_W.numpy(), _raw_rows(data["ppg"], "labels", sid))


def test_transform_is_applied(data):
    ds = PPGOnlyDataset(_paths(data), split="val", windows_per_subject=W, transform=lambda x: 2 * x)
    raw = PPGOnlyDataset(_paths(data), split="val", windows_per_subject=W)
    assert torch.equal(ds[0][0], 2 * raw[0][0])
    mm = MultiModalSleepDataset(_paths(data), split="val", windows_per_subject=W, transform=lambda p, e: (e, p))
    mm_raw = MultiModalSleepDataset(_paths(data), split="val", windows_per_subject=W)
    assert torch.equal(mm[0][0], mm_raw[0][1]) and torch.equal(mm[0][1], mm_raw[0][0])


def _batches(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_worker_loader_matches_single_process(data):
    ds_kwargs = dict(batch_size=2, model_type="real_ecg", windows_per_subject=W, return_index=True)
    _, val0, test0, _, _, _ = get_dataloaders(_paths(data), num_workers=0, **ds_kwargs)
    _, val2, test2, train_ds2, _, _ = get_dataloaders(_paths(data), num_workers=2, **ds_kwargs)
    assert val2.persistent_workers and not val0.persistent_workers
    val2.dataset[0], test2.dataset[0]  # handles opened in the parent before the fork: workers open their own
    for a_loader, b_loader in ((val0, val2), (test0, test2)):
        a, b = _batches(a_loader), _batches(b_loader)
        assert len(a) == len(b) > 0
        for batch_a, batch_b in zip(a, b):
            for ta, tb in zip(batch_a, batch_b):
                assert torch.equal(ta, tb)
    # the shuffled training loader with workers still yields every training night exactly once per epoch
    train2 = get_dataloaders(_paths(data), num_workers=2, **ds_kwargs)[0]
    seen = torch.cat([batch[-1] for batch in train2])
    assert sorted(seen.tolist()) == list(range(len(train_ds2))) and len(seen) > 2


def test_distributed_samplers_partition_the_data(data, monkeypatch):
    # DistributedSampler asks torch.distributed for world size/rank unless given; emulate 2 ranks
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: rank)
        monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
        train, val, _, _, val_ds, _ = get_dataloaders(_paths(data), batch_size=1, windows_per_subject=W,
                                                      distributed=True, return_index=True)
        assert isinstance(train.sampler, torch.utils.data.DistributedSampler) and train.sampler.shuffle
        assert not val.sampler.shuffle
        shares.append([int(b[-1]) for b in val])
    assert sorted(shares[0] + shares[1]) == list(range(len(val_ds)))


def test_distributed_shuffles_differ_between_epochs_and_runs():
    """Under DDP each (run seed, epoch) shuffles on its own: run r's epoch e + 1 is not run r + 1's epoch e
    (a sampler seeded with the run seed + epoch would make it so), and a SegmentSampler passes its epoch on
    to the DistributedSampler inside it."""
    from sleepppg.trainingdata import epoch_seed, set_loader_epoch

    def order(run_seed, epoch, segments=False):
        items = list(range(40))
        sampler = torch.utils.data.DistributedSampler(items, num_replicas=2, rank=0, shuffle=True, seed=42)
        loader = torch.utils.data.DataLoader(items, sampler=sampler)
        set_loader_epoch(loader, run_seed, epoch)
        if segments:  # the SegmentSampler alone, as a user of get_dataloaders would call it
            wrapped = crops.SegmentSampler(torch.utils.data.DistributedSampler(items, num_replicas=2, rank=0,
                                                                             shuffle=True, seed=42), None)
            wrapped.set_epoch(epoch_seed(run_seed, epoch))
            return list(wrapped.sampler)
        return list(loader.sampler)

    assert order(43, 1) == order(43, 1)
    assert order(43, 2) != order(44, 1) and order(43, 3) != order(44, 2) and order(43, 1) != order(43, 2)
    assert order(43, 1, segments=True) != order(43, 2, segments=True)

def test_load_labels_equals_label_slices(data):
    split = make_split(data["index"], W)
    labels_SW = load_labels(data["ppg"], data["index"], split.train, W)
    assert labels_SW.shape == (len(split.train), W) and labels_SW.dtype == np.int64
    for row, sid in zip(labels_SW, split.train):
        np.testing.assert_array_equal(row, _raw_rows(data["ppg"], "labels", sid))


def test_missing_files_name_the_file(data, tmp_path):
    paths = {**_paths(data), "ppg": str(tmp_path / "absent_ppg.h5")}
    with pytest.raises(FileNotFoundError, match="absent_ppg.h5"):
        PPGOnlyDataset(paths, windows_per_subject=W)
    import shutil
    for key in ("ppg", "index"):  # a folder with every file but the ECG one
        shutil.copy(data[key], tmp_path)
    PPGOnlyDataset(tmp_path, windows_per_subject=W)
    with pytest.raises(FileNotFoundError, match="mesa_real_ecg.h5"):
        MultiModalSleepDataset(tmp_path, windows_per_subject=W)
    with pytest.raises(ValueError, match="split"):
        PPGOnlyDataset(_paths(data), split="validation", windows_per_subject=W)


def test_non_contiguous_night_is_rejected(data, tmp_path):
    import shutil
    index = tmp_path / "index.h5"
    shutil.copy(data["index"], index)
    sid = make_split(data["index"], W).test[0]
    with h5py.File(index, "r+") as f:
        rows = f[f"subjects/{sid}/window_indices"][()]
        rows[[0, 1]] = rows[[1, 0]]
        f[f"subjects/{sid}/window_indices"][...] = rows
    with pytest.raises(ValueError, match=f"subject {sid}.*contiguous"):
        PPGOnlyDataset({**_paths(data), "index": str(index)}, split="test", windows_per_subject=W)


def test_float64_gzip_files_are_read_as_float32(data, tmp_path):
    """A reference-style file (float64, gzip) loads to the same float32 items."""
    ref = tmp_path / "ref_ppg.h5"
    with h5py.File(data["ppg"], "r") as src, h5py.File(ref, "w") as dst:
        dst.create_dataset("ppg", data=src["ppg"][()].astype(np.float64), compression="gzip")
        dst["labels"] = src["labels"][()]
    ours = PPGOnlyDataset(_paths(data), split="val", windows_per_subject=W)
    theirs = PPGOnlyDataset({**_paths(data), "ppg": str(ref)}, split="val", windows_per_subject=W)
    assert torch.equal(ours[0][0], theirs[0][0]) and theirs[0][0].dtype == torch.float32


def test_cli_prints_split_and_missing_ids(data, capsys):
    cfg_overrides = {"data.ppg_file": data["ppg"], "data.ecg_file": data["ecg"], "data.index_file": data["index"]}
    paths = data_paths_from_config(load_config(REPO / "configs" / "config_demo.yaml", cfg_overrides))
    assert paths == {"ppg": data["ppg"], "ecg": data["ecg"], "index": data["index"]}
    import yaml
    cfg_file = data["index"].replace("mesa_subject_index.h5", "cfg.yaml")
    raw = yaml.safe_load((REPO / "configs" / "config_demo.yaml").read_text())
    raw["data"].update(ppg_file=data["ppg"], ecg_file=data["ecg"], index_file=data["index"])
    with open(cfg_file, "w") as f:
        yaml.safe_dump(raw, f)
    assert mda.main(["--config", cfg_file, "--windows-per-subject", str(W)]) == 0
    out = capsys.readouterr().out
    assert "train 5, val 2, test 3" in out
    assert f"missing: {204 - 3}" in out and data["short"][0] in out
    raw["data"]["index_file"] = "/nonexistent/mesa_subject_index.h5"
    with open(cfg_file, "w") as f:
        yaml.safe_dump(raw, f)
    assert mda.main(["--config", cfg_file]) == 2  # bad setup, as every script
    assert "not found" in capsys.readouterr().err


def test_loader_benchmark_runs_on_a_tiny_size():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(REPO / "bench" / "bench_loader.py"), "--nights", "3", "--windows",
                          "8", "--repeats", "1"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "reference (gzip float64, open per item)" in out and "ours (float32, lzf)" in out


# ----------------------------------------------------------------------------------------------------------
# Training on crops (segment_windows)


def slow_crop_candidates(labels_W, n):
    """Obvious version: every start whose crop holds a scored epoch; every start when none does."""
    starts = [s for s in range(len(labels_W) - n + 1) if any(label != -1 for label in labels_W[s:s + n])]
    return starts or list(range(len(labels_W) - n + 1))


def test_crop_candidates_equal_the_slow_version():
    rng = np.random.default_rng(3)
    for _ in range(50):
        w = int(rng.integers(1, 30))
        labels_W = rng.choice([-1, -1, 0, 1, 2, 3], size=w)
        labels_W[int(rng.integers(0, w + 1)):] = -1  # padded tail, sometimes the whole night
        for n in {1, max(1, w // 3), w}:
            assert crops.crop_candidates(labels_W, n).tolist() == slow_crop_candidates(labels_W.tolist(), n)
    assert crops.crop_candidates(np.array([-1, -1, 2, -1, -1, -1]), 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="does not fit"):
        crops.crop_candidates(np.zeros(4), 5)


def test_crops_are_deterministic_per_seed_and_epoch_and_spread_over_the_night():
    candidates = np.array([0, 1, 2, 5, 6, 9, 10, 11, 12])
    draws = [crops.draw_crop_starts(candidates, 3, epoch_seed=11, night=n).tolist() for n in range(20)]
    assert draws == [crops.draw_crop_starts(candidates, 3, epoch_seed=11, night=n).tolist() for n in range(20)]
    for starts in draws:  # one start from each third of the candidates
        assert starts[0] in (0, 1, 2) and starts[1] in (5, 6, 9) and starts[2] in (10, 11, 12)
    assert len({tuple(d) for d in draws}) > 5
    assert draws != [crops.draw_crop_starts(candidates, 3, epoch_seed=12, night=n).tolist() for n in range(20)]
    few = crops.draw_crop_starts(np.array([4, 7]), 5, epoch_seed=1, night=0)  # fewer candidates than crops
    assert few.size == 5 and set(few.tolist()) <= {4, 7}
    assert crops.crops_per_night(1200, 240) == 5 and crops.crops_per_night(1200, 500) == 2
    assert crops.crops_per_night(10, 10) == 1
    # whole nights per evaluation batch: no more windows than a training batch, at least one night
    assert mda.eval_batch_size(8, 0, 1200) == 8 and mda.eval_batch_size(2, 240, 1200) == 1
    assert mda.eval_batch_size(16, 240, 1200) == 3 and mda.eval_batch_size(8, 600, 1200) == 4


def test_segment_loader_items_are_crops_of_the_raw_rows(data):
    n = 5
    kwargs = dict(batch_size=3, windows_per_subject=W, return_index=True, segment_windows=n, seed=42)
    train0, val0, _, train_ds, _, _ = get_dataloaders(_paths(data), num_workers=0, **kwargs)
    assert isinstance(train0.sampler, crops.SegmentSampler)
    assert next(iter(val0))[0].shape[-1] == W * SAMPLES_PER_WINDOW  # validation stays whole nights
    assert val0.batch_size == 1  # 3 crops of 5 windows: fewer windows than one 16-window night

    def epoch_items(loader, epoch_seed):
        loader.sampler.sampler.generator = torch.Generator().manual_seed(epoch_seed)
        loader.sampler.set_epoch(epoch_seed)
        return [tuple(t.clone() for t in batch) for batch in loader]

    first = epoch_items(train0, 7)
    k = train_ds.crops_per_night
    assert k == W // n > 1
    seen = {}
    for ppg_BT, labels_BW, index_B in ((b[0][:, 0], b[1], b[2]) for b in first):
        assert ppg_BT.shape[1] == n * SAMPLES_PER_WINDOW and labels_BW.shape[1] == n
        for ppg_T, labels_W, idx in zip(ppg_BT, labels_BW, index_B.tolist()):
            sid = train_ds.subjects[idx]
            raw_labels = _raw_rows(data["ppg"], "labels", sid)
            raw_ppg = _raw_rows(data["ppg"], "ppg", sid)
            assert (labels_W != -1).any() or (raw_labels == -1).all()  # never an all-padding crop
            starts = [s for s in crops.draw_crop_starts(train_ds.crop_starts[idx], k, 7, idx).tolist()
                      if np.array_equal(raw_labels[s:s + n], labels_W.numpy())
                      and np.array_equal(raw_ppg[s:s + n].reshape(-1), ppg_T.numpy())]
            assert starts, f"night {idx}: an item that is none of its epoch's crops"
            seen.setdefault(idx, []).append(starts[0])
    assert sorted(seen) == list(range(len(train_ds)))  # every night, k crops each, spread over the night
    for idx, starts in seen.items():
        assert sorted(starts) == crops.draw_crop_starts(train_ds.crop_starts[idx], k, 7, idx).tolist()
    # the same epoch seed gives the same crops again, also from 2 worker processes; another seed others
    train2 = get_dataloaders(_paths(data), num_workers=2, **kwargs)[0]
    for a, b in zip(first, epoch_items(train2, 7)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, epoch_items(train0, 8)))
    with pytest.raises(ValueError, match="segment_windows"):
        PPGOnlyDataset(_paths(data), windows_per_subject=W, segment_windows=W + 1)
