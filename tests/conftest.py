"""Shared test setup: make the repo root importable (the scripts are top-level modules)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os  # noqa: E402

# Under pytest-xdist (`-n 2`, the README's test command) each worker process runs tests on one core: one
# intra-op thread per worker, and the same for the scripts the tests start, so two workers never fight over
# two cores with four threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
