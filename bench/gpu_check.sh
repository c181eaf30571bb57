#!/usr/bin/env bash
# GPU check for a bare CUDA machine that has PyTorch but not mne: catches, on the first GPU it meets, the faults
# that CPU tests (gloo) cannot show. About 7 minutes on one H200; any failed step stops it with a non-zero exit.
#
# 1. the card(s), driver, CUDA and torch versions; the light packages (pip installs the missing ones, never
#    torch or mne);
# 2. bench/bench_train.py on CUDA: reference vs ours (bf16 eager; ours is the step training runs), 20 timed
#    steps after 3 warm-up ones; then --mode memory at 2 and 4 full nights, with and without activation
#    checkpointing (peak allocated, peak reserved, CUDA context, the batch that fits 24/40/80 GB);
# 3. a synthetic processed cohort (tests/helpers.write_processed: 40 nights of 1,200 windows, 28 train, 8
#    validation, 4 test) and train_ppg_only.py under torchrun (NCCL, one process per GPU present), every run
#    with bf16 autocast, gpu.compile and training.activation_checkpointing together, on 120-window crops
#    (training.segment_windows: 280 crops = 35 steps of 8 per epoch on one GPU, so the compile warm-up of epoch 1
#    does not dominate the later epochs' speed) with validation and test on whole nights, and 2 loader workers
#    (forkserver beside NCCL):
#    a. 2 epochs; b. --resume of (a) to 3 epochs; c. a child of (a): --init-from its best_model.pth with
#    --freeze-encoder 1 on 2 epochs (epoch 2 unfreezes the encoder: DDP is rebuilt, the graph recompiled).
#    Each must exit 0 (torchrun fails when any process does), with finite losses and world_size = the GPU count.
#
# Figures go to $WORK/gpu_check.json (versions, bench nights/s and memory, each run's epoch seconds and
# nights/s, test kappa); work files to $WORK (default: a temp dir). Usage: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$WORK"
export WORK
PY="${PYTHON:-python3}"
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START )) s] $*"; }
trap 'echo "== gpu_check FAILED at line $LINENO (status $?); work files in $WORK" >&2' ERR

stamp "machine"
nvidia-smi -L
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version(), '| GPUs', torch.cuda.device_count()); sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "torch sees no CUDA device: stopping"; exit 1; }
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
[ "$NGPU" -ge 1 ]

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

stamp "bench_train: reference vs ours (bf16, eager; 20 timed steps)"
"$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 16 --steps 20 --warmup 3 \
  --work-dir "$WORK/bench" --mode compare --json "$WORK/bench_eager.json"

stamp "bench_train: training-step memory (bf16, cuDNN autotuning; 2 and 4 nights; checkpointing off/on)"
"$PY" bench/bench_train.py --device cuda --n-windows 1200 --nights 4 --work-dir "$WORK/bench" --mode memory \
  --memory-batches 2 4 --json "$WORK/bench_memory.json"

stamp "synthetic processed cohort (40 nights x 1200 windows) and the run configs"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
import yaml
sys.path[:0] = [".", "tests"]
from helpers import write_processed

work = Path(sys.argv[1])
paths = write_processed(work / "mesa-x", n_subjects=40, windows_per_subject=1200, n_test=4)
cfg = yaml.safe_load(Path("configs/config_cloud.yaml").read_text())
cfg["data"].update(ppg_file=paths["ppg"], ecg_file=paths["ecg"], index_file=paths["index"], batch_size=8,
                   num_workers=2)
cfg["gpu"].update(mixed_precision=True, compile=True)
cfg["training"].update(activation_checkpointing=True, segment_windows=120)
cfg["output"]["save_dir"] = str(work / "outputs")
(work / "config_gpu_check.yaml").write_text(yaml.safe_dump(cfg))
cfg["output"]["save_dir"] = str(work / "outputs_child")
(work / "config_child.yaml").write_text(yaml.safe_dump(cfg))
print("wrote", paths["ppg"], "and the configs in", work)
EOF

TRAIN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" train_ppg_only.py --model ppg_only
       --device cuda)
stamp "a. train, $NGPU GPU(s), NCCL: compile + activation checkpointing + crops, 2 epochs"
"${TRAIN[@]}" --config "$WORK/config_gpu_check.yaml" --epochs 2
stamp "b. --resume of (a) to 3 epochs"
RUN_A=$(ls -d "$WORK"/outputs/ppg_only_*)
"${TRAIN[@]}" --config "$WORK/config_gpu_check.yaml" --epochs 3 --resume "$RUN_A"
stamp "c. child of (a): --init-from best_model.pth --freeze-encoder 1, 2 epochs (unfreezes in epoch 2)"
"${TRAIN[@]}" --config "$WORK/config_child.yaml" --epochs 2 --init-from "$RUN_A/checkpoints/best_model.pth" \
  --freeze-encoder 1

stamp "checks and $WORK/gpu_check.json"
"$PY" - "$WORK" "$NGPU" "$(( $(date +%s) - START ))" <<'EOF'
import json, math, subprocess, sys
from pathlib import Path
import torch

work, ngpu, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True, check=True).stdout.strip().splitlines()
runs = {}
for name, folder, epochs in (("a+b resumed", "outputs", 3), ("c child", "outputs_child", 2)):
    (results,) = (work / folder).glob("ppg_only_*/results/test_results.json")
    r = json.loads(results.read_text())
    losses = r["training_history"]["train_losses"] + r["training_history"]["val_losses"]
    assert all(math.isfinite(x) for x in losses), (name, losses)
    assert r["epochs_trained"] == epochs and r["world_size"] == ngpu, (name, r["epochs_trained"], r["world_size"])
    runs[name] = {"epochs": r["epochs_trained"], "epoch_seconds": r["timing"]["epoch_seconds"],
                  "train_nights_per_s": r["timing"]["train_nights_per_s"], "test_kappa": r["test_kappa_overall"],
                  "test_accuracy": r["test_accuracy_overall"], "world_size": r["world_size"]}
    print(f"{name}: test kappa {r['test_kappa_overall']:.4f} | epoch s "
          f"{', '.join(f'{x:.1f}' for x in r['timing']['epoch_seconds'])} | nights/s "
          f"{', '.join(f'{x:.1f}' for x in r['timing']['train_nights_per_s'])}")
summary = {"gpus": smi, "n_gpus": ngpu, "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(),
           "bench_compare": json.loads((work / "bench_eager.json").read_text()).get("figures"),
           "bench_memory": json.loads((work / "bench_memory.json").read_text()).get("memory"),
           "runs": runs, "seconds": seconds}
(work / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print("wrote", work / "gpu_check.json")
EOF
stamp "done: every check passed; work files in $WORK"
