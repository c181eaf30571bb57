"""Tests for sleepppg.checkpoints: our checkpoints (round trip, errors, wrapper prefixes, another window count,
TCN causality), the integrity record (save_checkpoint, a changed tensor byte refused, files without one), the
reference's checkpoints of both versions, and files that cannot be a usable model."""
import errno
import logging
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, TINY_WINDOWS, model_forward, model_inputs, rewrite_torch_archive
from reference_model import NAMINGS, RefMultiModalSleepNet, RefSleepPPGNet, randomize

from multimodal_sleep_model import FUSION_STRATEGIES, SleepPPGNet, build_model, count_parameters
from sleepppg.checkpoints import (
    NO_CHECKSUM,
    REFERENCE_NO_CHECKSUM,
    REFERENCE_VERSIONS,
    CheckpointError,
    checkpoint_model_fields,
    load_model_from_checkpoint,
    read_checkpoint_file,
    save_checkpoint,
    tensor_checksum,
    verify_integrity,
)

N_WINDOWS = TINY_WINDOWS
VARIANTS = [("ppg_only", {})] + [("real_ecg", {"fusion_strategy": s}) for s in FUSION_STRATEGIES]


# ----------------------------------------------------------------------------------------------------------
# Our checkpoints


@pytest.mark.parametrize("kind,extra", [VARIANTS[0], VARIANTS[2]])
def test_checkpoint_round_trip(tmp_path, kind, extra):
    torch.manual_seed(1)
    model = build_model(kind, n_windows=N_WINDOWS, dropout=0.1, **extra)
    ppg, ecg = model_inputs(batch=1, seed=3)
    model_forward(model.train(), ppg, ecg)  # move BatchNorm running stats away from their init
    model.eval()
    path = tmp_path / "best_model.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict(), "epoch": 3,
                "metrics": {"kappa": 0.5}}, path)
    loaded, ckpt = load_model_from_checkpoint(path, expected_kind=kind)
    assert ckpt["epoch"] == 3 and ckpt["model_args"]["n_windows"] == N_WINDOWS
    assert not loaded.training and type(loaded) is type(model) and loaded.model_args == model.model_args
    with torch.no_grad():
        assert torch.equal(model_forward(model, ppg, ecg), model_forward(loaded, ppg, ecg))


def test_checkpoint_errors(tmp_path):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    path = tmp_path / "m.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict()}, path)
    with pytest.raises(ValueError, match="'ppg_only' model but a 'real_ecg'"):
        load_model_from_checkpoint(path, expected_kind="real_ecg")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model_from_checkpoint(tmp_path / "nope.pth")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_model_from_checkpoint(tmp_path / "other.pth")
    torch.save({"model_kind": "generated_ecg", "model_args": {}, "model_state_dict": {}}, tmp_path / "k.pth")
    with pytest.raises(ValueError, match="unknown model_kind"):
        load_model_from_checkpoint(tmp_path / "k.pth")
    torch.save({"model_kind": "ppg_only", "model_args": {"n_windows": 8, "depth": 3},
                "model_state_dict": model.state_dict()}, tmp_path / "args.pth")
    with pytest.raises(ValueError, match="cannot build"):
        load_model_from_checkpoint(tmp_path / "args.pth")
    torch.save({"model_kind": "real_ecg", "model_args": {"n_windows": 8},
                "model_state_dict": model.state_dict()}, tmp_path / "mismatch.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_model_from_checkpoint(tmp_path / "mismatch.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_model_from_checkpoint(tmp_path / "junk.pth")


def test_checkpoint_fields_unwrap_compiled_or_ddp_prefixes(tmp_path):
    torch.manual_seed(2)
    model = SleepPPGNet(n_windows=N_WINDOWS).eval()
    ppg, _ = model_inputs(batch=1)
    # DDP; compile(DDP(m)) as train_ppg_only wraps; DDP/DataParallel(compile(m)), the other order
    for prefix in ("module.", "_orig_mod.module.", "module._orig_mod."):
        state = {prefix + k: v for k, v in model.state_dict().items()}
        torch.save({**checkpoint_model_fields(model), "model_state_dict": state}, tmp_path / "wrapped.pth")
        loaded, _ = load_model_from_checkpoint(tmp_path / "wrapped.pth")
        with torch.no_grad():
            assert torch.equal(model(ppg), loaded(ppg)), prefix


def test_loading_at_another_window_count_equals_a_model_built_there(tmp_path):
    torch.manual_seed(3)
    short = SleepPPGNet(n_windows=4, tcn_causal=False)
    model_forward(short.train(), *model_inputs(batch=2, n_windows=4))  # move BatchNorm stats off their init
    short.eval()
    built = SleepPPGNet(n_windows=N_WINDOWS, tcn_causal=False).eval()
    built.load_state_dict(short.state_dict())
    path = tmp_path / "short.pth"
    torch.save({**checkpoint_model_fields(short), "model_state_dict": short.state_dict()}, path)
    loaded, ckpt = load_model_from_checkpoint(path, n_windows=N_WINDOWS)
    assert ckpt["trained_n_windows"] == 4 and ckpt["model_args"]["n_windows"] == N_WINDOWS
    assert ckpt["checkpoint_format"] == "sleepppg"
    ppg, _ = model_inputs(batch=1, seed=8)
    with torch.no_grad():
        assert torch.equal(loaded(ppg), built(ppg))
    with pytest.raises(ValueError, match="n_windows"):
        load_model_from_checkpoint(path, n_windows=0)


def test_tcn_causal_round_trip(tmp_path):
    torch.manual_seed(4)
    centred = SleepPPGNet(n_windows=N_WINDOWS, tcn_causal=False).eval()
    assert centred.model_args["tcn_causal"] is False
    torch.save({**checkpoint_model_fields(centred), "model_state_dict": centred.state_dict()}, tmp_path / "c.pth")
    loaded, ckpt = load_model_from_checkpoint(tmp_path / "c.pth")
    assert ckpt["model_args"]["tcn_causal"] is False and loaded.model_args == centred.model_args
    ppg, _ = model_inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(ppg), centred(ppg))


def test_the_model_module_imports_no_checkpoint_code_and_neither_import_order_cycles():
    for first in ("import sleepppg.checkpoints", "import multimodal_sleep_model"):
        code = (f"{first}; import sys, multimodal_sleep_model as m, sleepppg.checkpoints as c; "
                f"assert not hasattr(m, 'load_model_from_checkpoint') and c.build_model is m.build_model")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------------------------------------
# Integrity: the checksum save_checkpoint records and every read verifies


def _trained_payload(seed=1):
    """(model, payload) as training saves it: model fields, weights and Adam state after one step, plain values."""
    torch.manual_seed(seed)
    model = SleepPPGNet(n_windows=N_WINDOWS, dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    ppg, _ = model_inputs(batch=2, seed=seed)
    torch.nn.functional.cross_entropy(model.train()(ppg), torch.randint(0, 4, (2, N_WINDOWS))).backward()
    optimizer.step()
    model.eval()
    return model, {**checkpoint_model_fields(model), "model_state_dict": model.state_dict(),
                   "optimizer_state_dict": optimizer.state_dict(), "epoch": 2, "metrics": {"kappa": 0.4}}


def test_save_checkpoint_records_the_checksum_and_loads_the_same_model(tmp_path):
    model, payload = _trained_payload()
    keys = list(payload)
    path = tmp_path / "run" / "best_model.pth"  # the folder is made
    record = save_checkpoint(path, payload)
    assert list(payload) == keys  # the caller's dict is not changed
    assert set(record) == {"algorithm", "covers", "tensors"} and record["algorithm"] == "sha256"
    assert record["covers"] == ["model_state_dict", "optimizer_state_dict"]
    assert re.fullmatch("[0-9a-f]{64}", record["tensors"])
    assert [p.name for p in path.parent.iterdir()] == ["best_model.pth"]  # no temporary file left
    loaded, ckpt = load_model_from_checkpoint(path, expected_kind="ppg_only")
    assert ckpt["integrity"] == record and ckpt["epoch"] == 2 and ckpt["checkpoint_format"] == "sleepppg"
    assert list(loaded.state_dict()) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ppg, _ = model_inputs(batch=1, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(ppg), model(ppg))
    raw = read_checkpoint_file(path)
    assert verify_integrity(path, raw) and tensor_checksum(raw) == record["tensors"]
    assert torch.equal(raw["optimizer_state_dict"]["state"][0]["exp_avg"],
                       payload["optimizer_state_dict"]["state"][0]["exp_avg"])


@pytest.mark.parametrize("pick", [max, min], ids=["largest_tensor", "smallest_tensor"])
def test_a_flipped_byte_in_a_tensor_is_refused_naming_the_file(tmp_path, pick):
    _, payload = _trained_payload()
    path, control = tmp_path / "best_model.pth", tmp_path / "rewritten.pth"
    save_checkpoint(path, payload)
    control.write_bytes(path.read_bytes())
    rewrite_torch_archive(control, pick, flip=False)  # the rewrite alone changes nothing that matters
    load_model_from_checkpoint(control)
    record = rewrite_torch_archive(path, pick)
    raw = torch.load(path, weights_only=True)  # torch reads the changed file without complaint
    assert tensor_checksum(raw) != raw["integrity"]["tensors"], record
    message = f"{path} fails its integrity check: the tensor data changed since it was saved"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model_from_checkpoint(path)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        read_checkpoint_file(path)


def test_changed_optimizer_state_or_a_missing_part_is_refused(tmp_path):
    _, payload = _trained_payload()
    save_checkpoint(tmp_path / "a.pth", payload)
    raw = read_checkpoint_file(tmp_path / "a.pth")
    raw["optimizer_state_dict"]["state"][0]["exp_avg"][0] += 1.0
    with pytest.raises(CheckpointError, match="x.pth fails its integrity check"):
        verify_integrity(tmp_path / "x.pth", raw)
    torch.save(raw, tmp_path / "b.pth")  # the changed state with the record of the original
    with pytest.raises(CheckpointError, match="b.pth fails its integrity check"):
        load_model_from_checkpoint(tmp_path / "b.pth")
    raw = read_checkpoint_file(tmp_path / "a.pth")
    del raw["optimizer_state_dict"]
    with pytest.raises(CheckpointError, match="fails its integrity check"):
        verify_integrity(tmp_path / "a.pth", raw)


def test_a_checkpoint_without_a_checksum_loads_with_a_note(tmp_path, caplog):
    model, payload = _trained_payload()
    path = tmp_path / "plain.pth"
    torch.save(payload, path)  # as torch.save alone writes it: no integrity record
    with caplog.at_level(logging.INFO, logger="sleepppg.checkpoints"):
        loaded, ckpt = load_model_from_checkpoint(path)
    assert ckpt["integrity"] == NO_CHECKSUM
    assert f"{path} carries no checksum" in caplog.text
    ppg, _ = model_inputs(batch=1, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(ppg), model(ppg))
    assert "integrity" not in read_checkpoint_file(path)


@pytest.mark.parametrize("record", [{"algorithm": "md5", "tensors": "00"}, {"algorithm": "sha256", "tensors": 3},
                                    {"algorithm": "sha256", "tensors": "00", "covers": "model_state_dict"}])
def test_an_integrity_record_that_cannot_be_checked_is_refused(tmp_path, record):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    path = tmp_path / "odd.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict(), "integrity": record}, path)
    with pytest.raises(CheckpointError, match="odd.pth has an integrity record that cannot be checked"):
        load_model_from_checkpoint(path)


def test_save_checkpoint_needs_weights_and_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    _, payload = _trained_payload()
    path = tmp_path / "last.pth"
    with pytest.raises(ValueError, match="model_state_dict"):
        save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, payload)
    good = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="disk full") as info:
        save_checkpoint(path, {**payload, "epoch": 3})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


# ----------------------------------------------------------------------------------------------------------
# Checkpoints of the reference implementation


def _reference_checkpoint(ref_model, epoch=7):
    """What the reference's training script saves as best_model.pth: weights, optimizer, numpy-float metrics."""
    optimizer = torch.optim.Adam(ref_model.parameters(), lr=2.5e-4, weight_decay=1e-5)
    return {"epoch": epoch, "model_state_dict": ref_model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
            "best_validation_loss": 0.61, "best_overall_kappa": np.float64(0.68),
            "training_history": {"train_losses": [0.9, 0.7], "val_overall_kappas": [np.float64(0.5), np.float64(0.68)]},
            "config": {"model_type": "ppg_only", "training": {"learning_rate": 2.5e-4, "num_epochs": 50},
                       "inference": {"only_inference": "flase"}}}


def _reference_and_ours_outputs(ref_model, ours, ppg, ecg):
    """(reference softmax output, reference logits before its softmax, our logits)."""
    captured = {}
    hook = ref_model.final_conv.register_forward_hook(lambda m, i, out: captured.update(logits=out))
    with torch.no_grad():
        probs = ref_model(ppg) if isinstance(ref_model, RefSleepPPGNet) else ref_model(ppg, ecg)
        logits = model_forward(ours, ppg, ecg)
    hook.remove()
    return probs, captured["logits"], logits


@pytest.mark.parametrize("naming", sorted(NAMINGS))
@pytest.mark.parametrize("fusion", [None, *FUSION_STRATEGIES])
def test_reference_checkpoint_gives_the_reference_outputs(tmp_path, fusion, naming, caplog):
    torch.manual_seed(0)
    ref = (RefSleepPPGNet(N_WINDOWS, naming=naming) if fusion is None
           else RefMultiModalSleepNet(fusion, N_WINDOWS, naming=naming))
    ref = randomize(ref, seed=5).eval()
    assert any(k.startswith(NAMINGS[naming][0 if fusion is None else 1] + ".") for k in ref.state_dict())
    path = tmp_path / "best_model.pth"
    torch.save(_reference_checkpoint(ref), path)
    with caplog.at_level(logging.INFO, logger="sleepppg.checkpoints"):
        ours, ckpt = load_model_from_checkpoint(path, n_windows=N_WINDOWS)
    assert ckpt["integrity"] == REFERENCE_NO_CHECKSUM and "it carries no checksum" in caplog.text
    kind = "ppg_only" if fusion is None else "real_ecg"
    assert ckpt["checkpoint_format"] == "reference" and ckpt["model_kind"] == kind and not ours.training
    assert ckpt["reference_version"] in REFERENCE_VERSIONS
    assert NAMINGS[naming][0] in ckpt["reference_version"]  # the version is told by its encoder's name
    assert ckpt["trained_n_windows"] == 1200 and ckpt["model_args"]["n_windows"] == N_WINDOWS
    assert ckpt["model_args"].get("fusion_strategy") == fusion and ckpt["model_args"]["tcn_causal"] is True
    assert "inferred" in ckpt["model_fields_inferred"] and ckpt["epoch"] == 7
    assert ckpt["best_overall_kappa"] == pytest.approx(0.68)
    ppg, ecg = model_inputs(batch=2, seed=9)
    probs, ref_logits, logits = _reference_and_ours_outputs(ref, ours, ppg, ecg)
    assert torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert torch.allclose(logits.softmax(dim=1), probs, rtol=1e-5, atol=1e-6)
    assert count_parameters(ours) == count_parameters(ref)


@pytest.mark.parametrize("naming", sorted(NAMINGS))
def test_reference_bare_state_dict_and_weight_norm_are_the_same_function(tmp_path, naming):
    ref = randomize(RefSleepPPGNet(N_WINDOWS, naming=naming), seed=2).eval()
    torch.save(ref.state_dict(), tmp_path / "weights.pth")  # a bare state dict with the reference's names
    ours, ckpt = load_model_from_checkpoint(tmp_path / "weights.pth", n_windows=N_WINDOWS, expected_kind="ppg_only")
    assert ckpt["checkpoint_format"] == "reference" and set(ckpt) >= {"model_state_dict", "model_args"}
    # the effective conv weight: w = g * v / ||v||, the norm over the input-channel and kernel dims
    g, v = ref.tcnblock2.network[3].conv2.weight_g, ref.tcnblock2.network[3].conv2.weight_v
    w = g * v / v.norm(dim=(1, 2), keepdim=True)
    assert torch.allclose(ours.head.tcn[1][3].net[3].conv.weight, w, atol=1e-6)
    ppg, _ = model_inputs(batch=1, seed=4)
    probs, ref_logits, logits = _reference_and_ours_outputs(ref, ours, ppg, None)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    # at the reference's own 1,200 windows by default (no n_windows given)
    full, _ = load_model_from_checkpoint(tmp_path / "weights.pth")
    assert full.n_windows == 1200


def test_reference_checkpoint_errors(tmp_path):
    ref = randomize(RefSleepPPGNet(N_WINDOWS), seed=3)
    state = ref.state_dict()
    state["tcnblock1.network.2.net.0.weight_v"] = state["tcnblock1.network.2.net.0.weight_v"] + 1.0
    torch.save({"model_state_dict": state}, tmp_path / "alias.pth")
    with pytest.raises(CheckpointError, match="net.0.weight_v and .*conv1.weight_v are one convolution"):
        load_model_from_checkpoint(tmp_path / "alias.pth")
    state = ref.state_dict()
    state["extra_head.weight"] = torch.zeros(3)
    torch.save({"model_state_dict": state}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="extra_head.weight"):
        load_model_from_checkpoint(tmp_path / "extra.pth")
    torch.save({"model_state_dict": ref.state_dict()}, tmp_path / "kind.pth")
    with pytest.raises(CheckpointError, match="'ppg_only' model but a 'real_ecg'"):
        load_model_from_checkpoint(tmp_path / "kind.pth", expected_kind="real_ecg")
    state = ref.state_dict()
    del state["resconv_blocks.3.bn2.running_var"]
    torch.save({"model_state_dict": state}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \(encoder.3.main.4.running_var\)"):
        load_model_from_checkpoint(tmp_path / "missing.pth")


def test_reference_weights_written_by_save_checkpoint_are_verified(tmp_path):
    ref = randomize(RefSleepPPGNet(N_WINDOWS), seed=6).eval()
    path = tmp_path / "ref.pth"
    record = save_checkpoint(path, {"model_state_dict": ref.state_dict()})
    _, ckpt = load_model_from_checkpoint(path, n_windows=N_WINDOWS)
    assert ckpt["checkpoint_format"] == "reference" and ckpt["integrity"] == record
    rewrite_torch_archive(path)
    with pytest.raises(CheckpointError, match="ref.pth fails its integrity check"):
        load_model_from_checkpoint(path)


# ----------------------------------------------------------------------------------------------------------
# Files that cannot be a usable model


class _Arbitrary:
    """Stands for any Python object a malicious or foreign pickle may hold."""


def _broken_files(tmp_path):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    good = tmp_path / "good.pth"
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict()}, good)
    files = {"empty.pth": b"", "random.pth": np.random.default_rng(0).bytes(4096),
             "text.pth": b"model_kind: ppg_only\nthis is a YAML file, not weights\n",
             "truncated.pth": good.read_bytes()[:5000]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"model_state_dict": model.state_dict(), "extra": _Arbitrary()}, tmp_path / "object.pth")
    with open(tmp_path / "plain_pickle.pth", "wb") as f:  # a legacy (non-zip) pickle with a set
        pickle.dump({"model_kind": "ppg_only", "stuff": {1, 2}}, f)
    return sorted(list(files) + ["object.pth", "plain_pickle.pth"])


def test_unusable_files_give_one_line_naming_the_file(tmp_path):
    for name in _broken_files(tmp_path):
        with pytest.raises(CheckpointError) as info:
            load_model_from_checkpoint(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg, msg
        assert "weights_only" not in msg, msg  # never torch's advice to load unsafely
    msg = str(pytest.raises(CheckpointError, load_model_from_checkpoint, tmp_path / "object.pth").value)
    assert "_Arbitrary" in msg and "no code from it runs" in msg
    assert "empty (0 bytes)" in str(pytest.raises(CheckpointError, load_model_from_checkpoint,
                                                  tmp_path / "empty.pth").value)
    assert "text file" in str(pytest.raises(CheckpointError, load_model_from_checkpoint, tmp_path / "text.pth").value)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_model_from_checkpoint(tmp_path)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, bad_value):
    model = SleepPPGNet(n_windows=N_WINDOWS)
    state = model.state_dict()
    state["head.tcn.1.2.net.3.conv.parametrizations.weight.original1"][0, 0, 0] = bad_value
    state["head.classifier.weight"][0] = bad_value  # a later tensor: only the first is named
    torch.save({**checkpoint_model_fields(model), "model_state_dict": state}, tmp_path / "diverged.pth")
    with pytest.raises(CheckpointError, match=r"diverged.pth: weight head.tcn.1.2.net.3.conv.parametrizations.weight"
                                              r".original1 holds NaN or Inf values \(1 of "):
        load_model_from_checkpoint(tmp_path / "diverged.pth")
    ref_state = randomize(RefSleepPPGNet(N_WINDOWS)).state_dict()
    ref_state["resconv_blocks.2.bn1.running_var"][3] = bad_value
    torch.save({"model_state_dict": ref_state}, tmp_path / "ref.pth")
    with pytest.raises(CheckpointError, match="weight resconv_blocks.2.bn1.running_var holds NaN or Inf"):
        load_model_from_checkpoint(tmp_path / "ref.pth")


@pytest.mark.parametrize("kind", ["random", "hdf5", "pickle"])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, kind):
    import h5py

    path = tmp_path / "model.pth"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "hdf5":
        with h5py.File(path, "w") as f:
            f["ppg"] = np.zeros((4, 8), dtype=np.float32)
    else:
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint_file(path)
    message = str(err.value)
    assert "not a PyTorch checkpoint" in message and "\n" not in message
    assert "weights_only" not in message and "Python objects" not in message
    assert ("an HDF5 file" in message) == (kind == "hdf5")
