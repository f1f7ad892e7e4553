#!/usr/bin/env bash
# One short check on a lent GPU machine: the CUDA tests, the gradient table on CUDA and,
# when switched on below, a 2-epoch GPU training run and the quick GPU benchmark. Run it once from
# the repository root under a 10-minute limit; it keeps itself well under 8 minutes (each step has a
# timeout, and steps still waiting after STOP_AFTER seconds are skipped). Everything it produces goes
# to $OUT/ (./gpu_out when OUT is unset): summary.txt first, then one file per step.
#
# The machine: python3 with torch 2.11, lightning 2.6.6, torchmetrics, tensorboard, pytest, hypothesis
# and matplotlib, but not jsonargparse, typeshed_client or docstring_parser (scripts/train.py needs
# them), and no internet. Prepare on the dev machine, from the repository root:
#
#   # 1. Wheels for python 3.12 on manylinux x86_64 (these three are pure Python; no dependencies are
#   #    missing there: jsonargparse needs PyYAML, typeshed_client typing_extensions, both present):
#   .venv/bin/pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl \
#       jsonargparse==4.53.0 typeshed_client==2.15.0 docstring_parser==0.18.0
#   #    Only if the machine turns out to lack torchvision (handgrad.data reads MNIST with it; the
#   #    summary says), add the build made for torch 2.11; it is installed only where none is:
#   # .venv/bin/pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
#   #     --platform manylinux_2_28_x86_64 -d .whl torchvision==0.26.0
#
#   # 2. MNIST, gzipped (~11 MB), from the read-only copy on the dev machines:
#   mkdir -p .gpu_data/MNIST/raw
#   for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -9 -c "$f" > ".gpu_data/MNIST/raw/$(basename "$f").gz"; done
#
#   # 3. Run it (both folders are new, untracked files; if git ignores them, name them in `carry`):
#   bash scripts/gpu_check.sh                            # the CUDA tests and the gradient table (~2-3 min)
#   RUN_TRAIN=0 RUN_BENCH=0 bash scripts/gpu_check.sh    # only the CUDA tests and the gradient table

set -uo pipefail  # no -e: a failing step is recorded in summary.txt and the next one still runs
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
STOP_AFTER=420  # seconds: a step not started by then is skipped, so the run ends well inside 10 minutes

# The training run and the benchmark, on by default: set to 0 to skip them (each has its own timeout).
RUN_TRAIN=${RUN_TRAIN:-1}  # 2 epochs of configs/mnist_mlp.yaml on the GPU via scripts/train.py (~1-2 min)
RUN_BENCH=${RUN_BENCH:-1}  # python3 scripts/benchmark.py --device cuda --quick (~1-2 min)

summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME TIMEOUT_S COMMAND...: runs COMMAND with its output in $OUT/NAME.txt and its status in summary.txt.
step() {
    local name=$1 limit=$2; shift 2
    if (( SECONDS > STOP_AFTER )); then summary "$name: SKIPPED (${SECONDS}s elapsed)"; return; fi
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local status=$?
    summary "$name: exit $status$([ $status = 124 ] && echo ' (timed out)') in $((SECONDS - start))s"
    tail -n 5 "$OUT/$name.txt" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
}

: > "$OUT/summary.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 --version
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| lightning', lightning.__version__)"
  python3 -c "import torchvision; print('torchvision', torchvision.__version__)" 2>&1 | tail -n 1
} > "$OUT/env.txt" 2>&1
summary "env: $(tr '\n' ' ' < "$OUT/env.txt")"

# (a) The carried wheels, into /tmp/site; handgrad itself from src/ (not installed).
wheels=()
for wheel in .whl/*.whl; do
    [ -e "$wheel" ] || continue
    if [[ $(basename "$wheel") == torchvision-* ]] && python3 -c "import torchvision" 2>/dev/null; then
        continue  # the machine's own torchvision, built for its torch, wins
    fi
    wheels+=("$wheel")
done
if (( ${#wheels[@]} )); then
    step install 60 python3 -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}"
else
    summary "install: no wheels in .whl/ (scripts/train.py will not start)"
fi
export PYTHONPATH=/tmp/site:$PWD/src

# (b) MNIST, unpacked where torchvision reads it: <root>/MNIST/raw/train-images-idx3-ubyte etc.
DATA=/tmp/handgrad-data
mkdir -p "$DATA/MNIST/raw"
for f in .gpu_data/MNIST/raw/*.gz; do [ -e "$f" ] && gunzip -c "$f" > "$DATA/MNIST/raw/$(basename "${f%.gz}")"; done
summary "mnist: $(ls "$DATA/MNIST/raw" | wc -l) files in $DATA/MNIST/raw"

# (c) The CUDA tests (every op against autograd in float64 and float32, float64 gradcheck, the fused ops,
# a network on CUDA against the CPU, float16 and bfloat16 autocast), then the gradient table on CUDA.
step test_cuda 240 python3 -m pytest -q -p no:cacheprovider --durations=10 tests/test_cuda.py
step check_grads_cuda 90 python3 scripts/check_grads.py --device cuda

# (d) A short GPU training run through the Lightning CLI (needs the wheels above and torchvision);
# its output (per-epoch lines, test accuracy) is $OUT/train_gpu.txt.
if [ "$RUN_TRAIN" = 1 ]; then
    step train_gpu 150 python3 scripts/train.py --config configs/mnist_mlp.yaml \
        --trainer.accelerator gpu --trainer.devices 1 --trainer.max_epochs 2 \
        --data.root "$DATA" --data.download false
fi

# (e) The quick GPU benchmark (step-time and memory rows, fp32 and bf16 autocast); its JSON goes to $OUT/ too.
if [ "$RUN_BENCH" = 1 ]; then
    step benchmark_cuda 150 python3 scripts/benchmark.py --device cuda --quick --groups steps --name gpu_check
    cp logs/benchmarks/gpu_check.json "$OUT/" 2>/dev/null
fi

summary "total: ${SECONDS}s"
