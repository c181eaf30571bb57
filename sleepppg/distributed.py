"""How a training run computes: its processes under torchrun (`DistContext`: rank, world size, broadcasts and
sums across ranks), what the steps call (`wrap_model`: DistributedDataParallel, torch.compile), bf16 autocast,
and the kernel settings (deterministic on the CPU, autotuned on CUDA).

A process not started by torchrun (WORLD_SIZE unset or 1) is a group of one: every collective is then a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Iterator

import torch

from sleepppg.errors import SetupError

log = logging.getLogger("sleepppg.distributed")


class DistContext:
    """Rank/world of this process; a single process when not launched by torchrun (WORLD_SIZE unset or 1)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("distributed: rank %d of %d, backend %s", self.rank, self.world_size, backend)

    def close(self) -> None:
        """Leave the process group. Objects that still hold it (a DDP model kept alive by the frames of an
        exception that stopped training) are collected first, so that gloo's worker threads end here and not
        during interpreter teardown, where they abort the process (SIGABRT) instead of letting it exit."""
        if self.enabled:
            import gc

            import torch.distributed as dist

            if dist.is_initialized():
                gc.collect()
                dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) into `module` on every rank, in place. DDP shares
        them only at the start of a training forward, so after the last step each rank holds its own; a model
        evaluated or saved from them would differ between ranks."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` replaced in place by its elementwise maximum over the ranks (e.g. 0/1 flags: 1 when any
        rank raised it); a device-side all-reduce, no host sync of its own. Returns `tensor`."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def all_gather(self, obj: Any) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        return [float(sum(v)) for v in zip(*self.all_gather(values))]


def wrap_model(raw_model: torch.nn.Module, cfg: dict, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """What the steps call: DDP under torchrun (it syncs the gradients of the parameters that require one when
    it is built, so it is rebuilt when the encoder is unfrozen), then torch.compile when gpu.compile is set."""
    model = raw_model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["gpu"]["compile"]:
        model = torch.compile(model)
    return model


def use_autocast(cfg: dict, device: torch.device) -> bool:
    """bf16 autocast: gpu.mixed_precision on CUDA; on the CPU only with gpu.mixed_precision_on_cpu as well
    (there it is mostly slower than fp32; it lets a CPU run take the same code path as a GPU run)."""
    gpu = cfg["gpu"]
    return gpu["mixed_precision"] and (device.type == "cuda" or gpu["mixed_precision_on_cpu"])


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` (CUDA, or the CPU when gpu.mixed_precision_on_cpu asks for it). bf16 keeps
    fp32's exponent range, so no GradScaler is needed (fp16 would need one)."""
    if enabled:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def inductor_cpp_compiler() -> str | None:
    """Path of the C++ compiler that torch.compile's CPU backend (inductor) would call, or None without one."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # where torch itself picks it ($CXX, g++, ...)

        return shutil.which(get_cpp_compiler())
    except (ImportError, RuntimeError):  # torch._inductor.exc.InvalidCxxCompiler is a RuntimeError
        return None


MIN_TORCH_DDP_COMPILE_CHECKPOINTING = (2, 6)  # torch 2.5's DDP graph splitter refuses checkpointed graphs


def check_compile_setup(cfg: dict, device: torch.device, distributed: bool = False) -> None:
    """Stop before any run folder is made when gpu.compile cannot work here: on the CPU without a C++ compiler
    (torch.compile builds C++ kernels), or several processes (DDP) with activation checkpointing on a torch
    older than 2.6 (its DDP graph splitter raises "Found a higher order op in the graph" at the first step)."""
    if not cfg["gpu"]["compile"]:
        return
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if distributed and cfg["training"]["activation_checkpointing"] and version < MIN_TORCH_DDP_COMPILE_CHECKPOINTING:
        raise SetupError(f"gpu.compile with training.activation_checkpointing under torchrun needs torch >= 2.6 "
                         f"(this is {torch.__version__}): upgrade torch, or turn one of the two off")
    if device.type == "cpu" and inductor_cpp_compiler() is None:
        raise SetupError("gpu.compile is true, but torch.compile on the CPU needs a C++ compiler and none was "
                         "found (torch looks for $CXX, g++ or clang++): install one, or set gpu.compile: false")


@contextlib.contextmanager
def kernel_settings(device: torch.device) -> Iterator[None]:
    """Reproducible kernels on the CPU (resume equivalence), autotuned ones on CUDA (cuDNN benchmark, TF32
    matmuls and convolutions); every process-wide flag it sets is set back as it was afterwards, so a caller
    that runs training in its own process (a test, a notebook) keeps its own settings."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        torch.backends.cuda.matmul.allow_tf32 = before[3]
        torch.backends.cudnn.allow_tf32 = before[4]


def loader_context(device: torch.device, distributed: bool, num_workers: int) -> str | None:
    """The multiprocessing start method of DataLoader workers: "forkserver" under torchrun on CUDA with workers
    (a worker forked from a process that holds a CUDA context and NCCL threads can deadlock or fail in CUDA
    calls; a forkserver child starts clean), else None (the default, fork on Linux: the fastest start)."""
    return "forkserver" if distributed and device.type == "cuda" and num_workers > 0 else None
