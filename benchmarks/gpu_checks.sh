#!/usr/bin/env bash
# The device checks, as one short prepared script for a lent GPU machine:
#   bash benchmarks/gpu_checks.sh            (from the repository root)
# CUDA tests first (correctness), then each benchmark at full size with CUDA rows.
set -uo pipefail
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
python -m pip install --quiet -e ".[test]" >/dev/null 2>&1 || true
export HF_HUB_OFFLINE=1
python -m pytest -q -k "cuda" tests/test_signal.py tests/test_device.py tests/test_solver_cv.py
python benchmarks/bench_signal.py --repeats 3 --skip-mne
python benchmarks/bench_solver.py --quick --skip-cpu   # full-size sklearn alone takes >10 min
python benchmarks/bench_embeddings.py --devices cpu cuda
