"""Tests for sleepppg.distributed: rank 0's BatchNorm statistics under torchrun with 2 gloo processes on the CPU,
the kernel flags set back after a run, and the DataLoader workers' start method beside NCCL."""
import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, write_processed

from sleepppg.distributed import kernel_settings, loader_context

# Each rank gives its BatchNorm different running statistics (as after a last training step on its own
# crops), then shares rank 0's; every rank writes what it holds.
RANK_SCRIPT = """
import json, os, sys
sys.path.insert(0, {repo!r})
import torch
from sleepppg.distributed import DistContext

ctx = DistContext()
ctx.init(torch.device("cpu"))
bn = torch.nn.BatchNorm1d(3)
with torch.no_grad():
    bn.running_mean.fill_(ctx.rank + 1.0)
    bn.running_var.fill_(10.0 * (ctx.rank + 1))
    bn.num_batches_tracked.fill_(5 + ctx.rank)
before = bn.running_mean.tolist()
ctx.broadcast_buffers(bn)
with open(os.path.join({out!r}, f"rank{{ctx.rank}}.json"), "w") as fh:
    json.dump({{"before": before, "mean": bn.running_mean.tolist(), "var": bn.running_var.tolist(),
               "n": int(bn.num_batches_tracked)}}, fh)
ctx.close()
"""


def test_every_rank_takes_rank_0s_batchnorm_statistics(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["before"] != ranks[1]["before"]  # they differed
    for held in ranks:
        assert held["mean"] == [1.0] * 3 and held["var"] == [10.0] * 3 and held["n"] == 5


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_kernel_settings_set_every_flag_back(device):
    """The flags kernel_settings sets (CUDA's are plain flags: no GPU needed to set and read them) are as they
    were after the run, whatever they were before it."""
    def flags():
        return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    saved = flags()
    try:
        for start in (False, True):
            torch.use_deterministic_algorithms(start)
            torch.backends.cudnn.benchmark = start
            torch.backends.cuda.matmul.allow_tf32 = start
            torch.backends.cudnn.allow_tf32 = start
            with kernel_settings(torch.device(device)):
                inside = flags()
            assert flags() == (start,) * 4
            assert inside == ((True, start, start, start) if device == "cpu" else (start, True, True, True))
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]


def test_loader_workers_start_by_forkserver_only_under_torchrun_on_cuda(tmp_path):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert loader_context(cuda, True, 2) == "forkserver"
    assert loader_context(cuda, True, 0) is None and loader_context(cuda, False, 2) is None
    assert loader_context(cpu, True, 2) is None
    # the datasets cross to a forkserver worker (pickled, files reopened there) and give the same batch
    import multimodal_dataset_aligned as mda

    data = write_processed(tmp_path, n_subjects=6, windows_per_subject=4, n_test=1)
    paths = {k: data[k] for k in ("ppg", "ecg", "index")}
    batches = []
    for context, workers in ((None, 0), ("forkserver", 1)):
        _, val, *_ = mda.get_dataloaders(paths, batch_size=2, num_workers=workers, windows_per_subject=4,
                                         return_index=True, multiprocessing_context=context)
        if context:
            assert val.multiprocessing_context.get_start_method() == context
        batches.append(next(iter(val)))
    for a, b in zip(*batches):
        assert torch.equal(a, b)


def test_compile_with_checkpointing_under_ddp_needs_torch_2_6(monkeypatch):
    import pytest
    import torch

    from sleepppg.distributed import check_compile_setup
    from sleepppg.errors import SetupError

    cfg = {"gpu": {"compile": True}, "training": {"activation_checkpointing": True}}
    monkeypatch.setattr("sleepppg.distributed.inductor_cpp_compiler", lambda: "g++")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(SetupError, match=r"needs torch >= 2.6 \(this is 2.5.1\+cu121\)"):
        check_compile_setup(cfg, torch.device("cpu"), distributed=True)
    check_compile_setup(cfg, torch.device("cpu"), distributed=False)  # one process: no DDP graph splitter
    check_compile_setup({**cfg, "training": {"activation_checkpointing": False}}, torch.device("cpu"), distributed=True)
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    check_compile_setup(cfg, torch.device("cpu"), distributed=True)
