#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one short run, from the repository root of a
# machine with one CUDA GPU and a CUDA build of torch: the GPU-only tests, then the
# ML-25M-shaped recipe (experiment=large) on the GPU with the compiled step, its training
# epoch, evaluation and peak GPU memory (projected from 320 batches, marked *).
#   bash benchmarks/gpu_check.sh [python]     # default: .venv/bin/python
set -euo pipefail
python=${1:-.venv/bin/python}
"$python" -c 'import sys, torch; torch.cuda.is_available() or sys.exit(
    f"torch {torch.__version__} sees no CUDA GPU here: nothing to measure")'
"$python" -m pytest -q -n 0 -m gpu tests/test_gpu.py
"$python" benchmarks/epoch_time.py --scale ml-25m/large --shapes --epochs 2 --steps 320 \
    trainer=gpu
