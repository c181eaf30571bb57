"""Tests for sleepppg.distributed under torchrun with 2 gloo processes on the CPU."""
import json
import subprocess
import sys

from helpers import REPO

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
