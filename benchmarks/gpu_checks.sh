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
# Solver (~5 min): op/sync counts on the real device first (issue 9's GPU goals), then the CUDA
# rows of every family (127 targets; sklearn on 10 folds, extrapolated), then P1-P3 wall-clock
# times at full size on CUDA (sklearn from --quick subsets). Each step is time-boxed.
SOLVER_MD=${OUT:-/tmp}
timeout 120 python benchmarks/bench_solver.py --device cuda --sections counts --budget 80 \
    --p2-count-targets 254 --p3-count-permutations 49 --markdown "$SOLVER_MD/solver_counts_cuda.md"
timeout 150 python benchmarks/bench_solver.py --device cuda --sections families --targets 127 \
    --sklearn-folds 10 --peers "" --exact-targets 2 --exact-folds 5 --markdown "$SOLVER_MD/solver_families_cuda.md"
timeout 90 python benchmarks/bench_solver.py --device cuda --quick --sections workloads
# Reads or launches (session 15 traded ~20 launches for each host read saved): both schedules
# timed on the device, per family
timeout 60 python benchmarks/bench_read_schedule.py --device cuda --families gpt2,outlier_trials --reps 2
python benchmarks/bench_embeddings.py --devices cpu cuda
# The whole study, one participant at real size, CPU and CUDA side by side (quick size).
timeout 150 python benchmarks/bench_pipeline.py --quick --devices cpu cuda
