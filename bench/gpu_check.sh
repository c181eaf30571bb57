#!/usr/bin/env bash
# GPU check for a bare CUDA machine that has PyTorch but not mne (about 8 minutes, under 10).
#
# 1. shows the GPU and checks that the light packages are importable (installs the missing ones with pip if
#    the machine can reach an index; nothing heavy, never torch or mne);
# 2. bench/bench_train.py on CUDA: reference recipe (fp32 eager, softmax + CE, gzip float64 loader) vs ours
#    (bf16 autocast, logits, float32 loader), then again with torch.compile for ours; nights/s and ratios;
# 3. bench/bench_train.py --mode memory on CUDA: our bf16 training step's peak memory with and without
#    activation checkpointing of the encoder, at 2 and 4 full nights per step (skipped, saying so, when this
#    checkout's bench has no memory mode);
# 4. a small synthetic processed cohort (tests/helpers.write_processed, 24 nights of 1,200 windows) and two
#    short train_ppg_only.py runs on it on CUDA (--epochs 2): bf16 eager, then bf16 + torch.compile (with
#    activation checkpointing where the config has the key); each run's test_results.json headline, epoch
#    seconds and nights/s and its files; asserts that both end with finite losses and that mne was never
#    imported.
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

# bench_train's --mode (compare | memory | both) exists once activation checkpointing is in; older checkouts
# only compare.
if "$PY" bench/bench_train.py --help | grep -q -- "--mode"; then HAS_MODES=1; COMPARE=(--mode compare); else
  HAS_MODES=0; COMPARE=(); fi

stamp "bench_train: reference vs ours (bf16, eager)"
"$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 16 --work-dir "$WORK/bench" "${COMPARE[@]}" \
  --json "$WORK/bench_eager.json"

stamp "bench_train: reference vs ours (bf16 + torch.compile)"
"$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 16 --work-dir "$WORK/bench" --compile \
  "${COMPARE[@]}" --json "$WORK/bench_compile.json"

stamp "bench_train: training-step memory with and without activation checkpointing (bf16, 2 and 4 nights)"
if [ "$HAS_MODES" = 1 ]; then
  "$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 4 --work-dir "$WORK/bench" --mode memory \
    --memory-batches 2 4 --json "$WORK/bench_memory.json"
else
  echo "skipped: this checkout's bench/bench_train.py has no --mode memory"
fi

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

stamp "train_ppg_only.py on CUDA, 2 epochs: bf16 eager, then bf16 + torch.compile"
"$PY" - "$WORK" <<'EOF'
import json, math, sys
from pathlib import Path
import yaml
sys.path.insert(0, ".")
import train_ppg_only
from sleepppg.config import CONFIG_SCHEMA

work = Path(sys.argv[1])
base = yaml.safe_load((work / "config_gpu_check.yaml").read_text())
checkpointing = "activation_checkpointing" in CONFIG_SCHEMA["training"]
variants = {"eager": {}, "compile": {"gpu": {"compile": True}}}
if checkpointing:
    variants["compile"]["training"] = {"activation_checkpointing": True}
for name, changes in variants.items():
    cfg = json.loads(json.dumps(base))
    cfg["gpu"]["mixed_precision"] = True
    cfg["output"]["save_dir"] = str(work / f"outputs_{name}")
    for section, values in changes.items():
        cfg[section].update(values)
    path = work / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = train_ppg_only.main(["--config", str(path), "--model", "ppg_only", "--device", "cuda", "--epochs", "2"])
    assert code == 0, (name, code)
    (results,) = (work / f"outputs_{name}").glob("ppg_only_*/results/test_results.json")
    r = json.loads(results.read_text())
    losses = r["training_history"]["train_losses"] + r["training_history"]["val_losses"]
    assert all(math.isfinite(x) for x in losses), (name, losses)
    print("%s%s: test kappa %.4f | accuracy %.4f | epochs %d | epoch s %s | nights/s %s | device %s" % (
        name, " + activation checkpointing" if name == "compile" and checkpointing else "",
        r["test_kappa_overall"], r["test_accuracy_overall"], r["epochs_trained"],
        ", ".join("%.1f" % x for x in r["timing"]["epoch_seconds"]),
        ", ".join("%.1f" % x for x in r["timing"]["train_nights_per_s"]), r["device"]))
    for p in sorted(results.parents[1].rglob("*")):
        if p.is_file():
            print("  ", p.relative_to(results.parents[1]))
assert "mne" not in sys.modules, "training imported mne"
print("mne imported: no")
EOF

stamp "done; work files in $WORK"
