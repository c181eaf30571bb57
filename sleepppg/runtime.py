"""The process a script runs in: which torch device (`resolve_device`, the same rules for training and
inference) and how glibc keeps freed memory (`keep_freed_memory`).
"""

from __future__ import annotations

import logging
import re

from sleepppg.errors import SetupError

GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_THRESHOLD = -1, -3  # mallopt() parameter codes (glibc malloc.h)
KEEP_FREED_BYTES = 2**31 - 1  # largest value mallopt takes (an int): blocks below 2 GiB come from the heap

log = logging.getLogger("sleepppg")


def resolve_device(requested: str | None, device_id: int = 0, local_rank: int | None = None):
    """The torch device for `--device`, with the same rules in training and inference.

    Args:
        requested: "auto" or None (CUDA when present, else the CPU with a warning), "cpu", "cuda" (the GPU
            below) or "cuda:N" (GPU N).
        device_id: the GPU that "auto" and "cuda" take (`gpu.device_id`).
        local_rank: under torchrun, this process's LOCAL_RANK: "auto" and "cuda" take that GPU instead.
    Returns:
        torch.device
    Raises:
        SetupError: an unknown name, CUDA asked for on a machine without it, a GPU index that does not exist,
            or "cuda:N" under torchrun (every rank would take the same GPU).
    """
    import torch

    name = "auto" if requested is None else str(requested).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if name == "auto":
        if not has_cuda:
            log.warning("no CUDA device found: running on the CPU (slow for full 10-h nights)")
            return torch.device("cpu")
        name = "cuda"
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise SetupError(f"--device must be auto, cpu, cuda or cuda:N (N = GPU number), got {requested!r}")
    if match.group(1) is not None and local_rank is not None:
        raise SetupError(f"--device {requested} under torchrun would put every rank on GPU {match.group(1)} "
                         f"(NCCL: duplicate GPU); use --device cuda or auto: each rank takes its LOCAL_RANK, and "
                         f"CUDA_VISIBLE_DEVICES chooses the GPUs")
    if not has_cuda:
        raise SetupError(f"--device {requested}: CUDA was asked for but this machine has none usable "
                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu")
    if match.group(1) is not None:
        index, source = int(match.group(1)), f"--device {requested}"
    elif local_rank is not None:
        index, source = int(local_rank), f"LOCAL_RANK={local_rank} (torchrun)"
    else:
        index, source = int(device_id), f"gpu.device_id={device_id}"
    count = torch.cuda.device_count()
    if index >= count:
        raise SetupError(f"{source} asks for cuda:{index} but this machine has {count} CUDA device(s) "
                         f"(cuda:0 to cuda:{count - 1})")
    return torch.device(f"cuda:{index}")


def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks below 2 GiB from its heap and to keep freed memory for reuse.

    A night's forward (and backward) pass allocates and frees activations of ~80 MB per night per layer; by
    default glibc gives each its own fresh mmap, which the kernel must fault in and zero page by page. Measured on this
    project's 2-core CPU box: ~1 s of system time per 10-h night, about as much as the model's arithmetic, and
    the forward pass twice as fast without it. (Sharing one arena with the preprocessing threads, so that they
    reuse memory too, made cold runs slower here: not done.) The cost: the process keeps its peak memory until
    it exits. Process-wide, so only the scripts' entry points call it (not their `main`, which tests call).
    Returns False where it does not apply (not glibc).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(GLIBC_M_MMAP_THRESHOLD, KEEP_FREED_BYTES) == 1
                and mallopt(GLIBC_M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1)
