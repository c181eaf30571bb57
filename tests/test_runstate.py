"""Tests of sleepppg.runstate that need no training run (whole runs are in tests/test_train.py): early stopping
and its round trip through a checkpoint, and a checkpoint write on a full disk (the file under the final name
untouched, no temporary left, the error naming the checkpoint)."""
from __future__ import annotations

import contextlib
import errno

import pytest
import torch

import sleepppg.checkpoints
import sleepppg.runstate
from sleepppg.paths import disk_full_error
from sleepppg.runstate import HISTORY_KEYS, TrainState, save_checkpoint


def test_train_state_early_stopping_and_checkpoint_round_trip():
    state = TrainState()
    values = dict.fromkeys(HISTORY_KEYS, 0.5)
    timing = {"epoch_seconds": 2.0, "train_nights_per_s": 0.048}
    improved = [state.record_epoch(e, {**values, "val_losses": loss}, timing, patience=2)
                for e, loss in enumerate((1.0, 0.8, 0.9, 0.85), start=1)]
    assert improved == [True, True, False, False]
    assert (state.epoch, state.best_epoch, state.best_val_loss, state.bad_epochs, state.stopped) == (4, 2, 0.8, 2,
                                                                                                      True)
    assert state.history["val_losses"] == [1.0, 0.8, 0.9, 0.85] and state.timing["train_nights_per_s"] == [0.048] * 4
    saved = state.to_checkpoint()
    assert saved["early_stopping"] == {"select_best_by": "val_loss", "best_value": 0.8, "best_val_loss": 0.8,
                                       "best_epoch": 2, "bad_epochs": 2, "stopped": True}
    assert TrainState.from_checkpoint(saved) == state
    saved["history"]["val_losses"].append(0.1)  # the checkpoint holds copies, not the live lists
    assert len(state.history["val_losses"]) == 4


def test_a_checkpoint_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"epoch": 1, "model_state_dict": {"weights": torch.arange(1000.0)}})
    real = sleepppg.checkpoints.atomic_output

    @contextlib.contextmanager
    def half_written_then_full(target):
        """As torch.save on a full disk: part of the bytes written, then a RuntimeError raised while handling
        the OSError ENOSPC of the failed write."""
        with real(target) as tmp:
            yield tmp
            tmp.write_bytes(tmp.read_bytes()[:100])
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    monkeypatch.setattr(sleepppg.checkpoints, "atomic_output", half_written_then_full)
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"epoch": 2, "model_state_dict": {"weights": torch.zeros(1000)}})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the temporary is gone
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["model_state_dict"]["weights"], torch.arange(1000.0))


def test_disk_full_error_follows_the_chain_of_exceptions():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full_error(full) is full
    assert disk_full_error(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError("unexpected pos") from None  # `from None` hides it from tracebacks, not __context__
    except RuntimeError as err:
        assert disk_full_error(err) is full
    assert disk_full_error(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full_error(RuntimeError("something else")) is None


def test_a_training_checkpoint_carries_a_checksum_and_a_flipped_byte_is_refused(tmp_path):
    """What training writes (last.pth, best_model.pth) is verified when a run resumes from it."""
    from helpers import rewrite_torch_archive

    from sleepppg.errors import SetupError
    from sleepppg.runstate import CHECKPOINT_KEYS, load_checkpoint

    model = torch.nn.Linear(64, 4)
    payload = {key: None for key in CHECKPOINT_KEYS}
    payload.update(model_state_dict=model.state_dict(), epoch=3)
    path = tmp_path / "checkpoints" / "last.pth"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["integrity"]["algorithm"] == "sha256"
    assert torch.equal(loaded["model_state_dict"]["weight"], model.weight)
    rewrite_torch_archive(path)
    with pytest.raises(SetupError, match=r"last\.pth.*fails its integrity check"):
        load_checkpoint(path)
