"""Tests for sleepppg.runtime.resolve_device: the device rules training and inference share."""
import pytest
import torch

from sleepppg.errors import SetupError
from sleepppg.runtime import resolve_device


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    with pytest.raises(SetupError, match="use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(SetupError, match="auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.mark.parametrize("cuda", [False, True])
def test_a_fixed_gpu_under_torchrun_is_refused(monkeypatch, cuda):
    """--device cuda:1 with LOCAL_RANK set would put every rank on GPU 1: refused, naming the way out."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(SetupError, match=r"cuda:1 under torchrun would put every rank on GPU 1.*--device cuda or auto"):
        resolve_device("cuda:1", local_rank=2)
    if cuda:  # each rank its own GPU; outside torchrun cuda:N is the user's choice
        assert resolve_device("cuda", local_rank=2) == torch.device("cuda:2")
        assert resolve_device("auto", local_rank=3) == torch.device("cuda:3")
        assert resolve_device("cuda:1") == torch.device("cuda:1")
        with pytest.raises(SetupError, match="has 4 CUDA device"):
            resolve_device("cuda:7")
