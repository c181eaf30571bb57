#!/usr/bin/env bash
# GPU check for a bare CUDA machine that has PyTorch but not mne (about 5 minutes, under 8).
#
# 1. shows the GPU and checks that the light packages are importable (installs the missing ones with pip if
#    the machine can reach an index; nothing heavy, never torch or mne);
# 2. bench/bench_train.py on CUDA: reference recipe (fp32 eager, softmax + CE, gzip float64 loader) vs ours
#    (bf16 autocast, logits, float32 loader), then again with torch.compile for ours; nights/s and ratios;
# 3. a small synthetic processed cohort (tests/helpers.write_processed, 24 nights of 1,200
#    windows) and one short train_ppg_only.py run on it on CUDA (--epochs 2), then its test_results.json
#    headline and the checkpoint listing; also asserts that mne was never imported.
#
# Everything is printed; work files go to $WORK (default: a temp dir). Usage: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$WORK"
PY="${PYTHON:-python3}"
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START )) s] $*"; }

stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not available"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| available', torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "torch sees no CUDA device: stopping"; exit 1; }

stamp "light packages"
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"h5py": "h5py", "yaml": "pyyaml", "tensorboard": "tensorboard", "sklearn": "scikit-learn",
        "tqdm": "tqdm", "matplotlib": "matplotlib", "scipy": "scipy"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  "$PY" -m pip install --quiet $missing || { echo "pip install failed (no index reachable?): $missing"; exit 1; }
else
  echo "all present"
fi

stamp "bench_train: reference vs ours (bf16, eager)"
"$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 16 --work-dir "$WORK/bench" \
  --json "$WORK/bench_eager.json"

stamp "bench_train: reference vs ours (bf16 + torch.compile)"
"$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 16 --work-dir "$WORK/bench" --compile \
  --json "$WORK/bench_compile.json"

stamp "synthetic processed cohort (24 nights x 1200 windows)"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
import yaml
sys.path[:0] = [".", "tests"]
from helpers import write_processed

work = Path(sys.argv[1])
paths = write_processed(work / "mesa-x", n_subjects=24, windows_per_subject=1200, n_test=4)
cfg = yaml.safe_load(Path("configs/config_cloud.yaml").read_text())
cfg["data"].update(ppg_file=paths["ppg"], ecg_file=paths["ecg"], index_file=paths["index"])
cfg["output"]["save_dir"] = str(work / "outputs")
(work / "config_gpu_check.yaml").write_text(yaml.safe_dump(cfg))
print("wrote", paths["ppg"], "and", work / "config_gpu_check.yaml")
EOF

stamp "train_ppg_only.py on CUDA, 2 epochs"
"$PY" - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
import train_ppg_only

work = Path(sys.argv[1])
code = train_ppg_only.main(["--config", str(work / "config_gpu_check.yaml"), "--model", "ppg_only",
                            "--device", "cuda", "--epochs", "2"])
assert code == 0, code
assert "mne" not in sys.modules, "training imported mne"
(results,) = (work / "outputs").glob("ppg_only_*/results/test_results.json")
r = json.loads(results.read_text())
print("test kappa %.4f | accuracy %.4f | epochs %d | nights/s per epoch %s | device %s" % (
    r["test_kappa_overall"], r["test_accuracy_overall"], r["epochs_trained"],
    ", ".join("%.1f" % x for x in r["timing"]["train_nights_per_s"]), r["device"]))
for p in sorted(results.parents[1].rglob("*")):
    if p.is_file():
        print("  ", p.relative_to(results.parents[1]))
print("mne imported: no")
EOF

stamp "done; work files in $WORK"
