"""gpurecon.parallel: the solver's problems split over Lightning Fabric ranks (CPU, gloo).

One Fabric launch in this module (the CLI run with ``devices=2``); the plan and the assembly
are checked in-process against one-process fits and scikit-learn.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet as SkElasticNet

from gpurecon import parallel
from gpurecon.solver import cross_val_predict, leave_one_out, permutations
from gpurecon.solver import nested_cross_val_predict
from gpurecon.solver.cv import nested_parts, part_of, select_grid_points

TOL = 1e-8
# a budget that splits these small fits into several chunks (about 4 columns each)
SMALL_BUDGET = 2**20


def make_problem(n=24, p=12, T=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    W = rng.standard_normal((p, T)) * (rng.random((p, T)) < 0.3)
    return X, X @ W + 0.5 * rng.standard_normal((n, T))


def in_process(X, Y, perms, n_ranks, **kw):
    """The sharded fit with every rank's part solved here, one after the other, gathered and
    merged by the same functions the ranks use."""
    results = [cross_val_predict(X, Y, permutations=perms, device="cpu", part=(k, n_ranks), **kw)
               for k in range(n_ranks)]
    ranges = [parallel.column_range(r.solved_columns) for r in results]
    width = max(hi - lo for lo, hi in ranges)
    blocks = [parallel.part_block(r, lo, hi, width) for r, (lo, hi) in zip(results, ranges)]
    merged = parallel.merge_parts(results[0], [(b, lo, hi) for b, (lo, hi) in zip(blocks, ranges)])
    return merged, ranges


def assert_same_bits(a, b):
    for key in ("predictions", "null_predictions", "converged", "gap_ratio", "n_iter"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape, key
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=key)


@pytest.mark.parametrize("n_chunks,n_parts", [(7, 3), (2, 4), (1, 1), (5, 5), (0, 2)])
def test_parts_are_contiguous_runs_covering_every_chunk_once(n_chunks, n_parts):
    chunks = list(range(n_chunks))
    parts = [part_of(chunks, (k, n_parts)) for k in range(n_parts)]
    assert sum(parts, []) == chunks
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert part_of(chunks, None) == chunks


@pytest.mark.parametrize("bad", [(2, 2), (-1, 2), (0, 0), (0.5, 2), (True, 2)])
def test_bad_part_is_one_clear_error(bad):
    X, Y = make_problem(T=2)
    with pytest.raises(ValueError, match="part must be"):
        cross_val_predict(X, Y, part=bad)


def test_too_many_ranks_and_bad_arguments_are_clear_errors():
    X, Y = make_problem(T=2)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda'"):
        parallel.rank_device_kind("tpu")
    with pytest.raises(ValueError, match="part="):
        parallel.sharded_cross_val_predict(X, Y, devices=2, device="cpu", part=(0, 2))


@pytest.mark.parametrize("T,n_ranks,preprocess", [(5, 2, None), (5, 3, None), (1, 2, None),
                                                  (4, 2, "standardize"), (2, 9, None)])
def test_parts_merged_equal_one_process_fit_bit_for_bit(T, n_ranks, preprocess, one_torch_thread):
    X, Y = make_problem(T=T)
    perms = permutations(X.shape[0], 4, seed=1)
    kw = dict(alphas=[0.1, 0.5], l1_ratios=[0.5], tol=TOL, memory_budget=SMALL_BUDGET, preprocess=preprocess)
    whole = cross_val_predict(X, Y, permutations=perms, device="cpu", **kw)
    sharded, ranges = in_process(X, Y, perms, n_ranks, **kw)
    assert whole.solved_columns is None
    busy = sum(hi > lo for lo, hi in ranges)
    assert busy >= 2                          # several chunks: the parts really split the work
    assert (busy < n_ranks) == (n_ranks == 9)  # 10 columns in fewer than 9 chunks: idle parts
    assert_same_bits(sharded, whole)
    assert bool(sharded.converged.all())
    # independent reference: scikit-learn, one fit per left-out trial, for the last target
    # of the real data and of the last permutation (the column bookkeeping of the parts)
    if preprocess is None:
        for y, got in ((Y[:, -1], sharded.predictions[1, :, -1]),
                       (Y[perms[-1], -1], sharded.null_predictions[-1, 1, :, -1])):
            ref = np.empty(len(y))
            for i, train in enumerate(leave_one_out(len(y))):
                model = SkElasticNet(alpha=0.5, l1_ratio=0.5, tol=1e-10, max_iter=100_000)
                ref[i] = model.fit(X[train], y[train]).predict(X[i:i + 1])[0]
            np.testing.assert_allclose(got.numpy(), ref, atol=1e-3 * np.abs(y).max())


@pytest.mark.parametrize("n_ranks,preprocess", [(2, None), (3, None), (2, "standardize")])
def test_nested_parts_merged_equal_one_process_nested_fit_bit_for_bit(n_ranks, preprocess, one_torch_thread):
    """The grid's inner search and its outer fits (with a null) split in parts, merged as rank 0
    merges them, then the same selection: bit for bit the one-process nested fit."""
    X, Y = make_problem(T=5)
    perms = permutations(X.shape[0], 3, seed=2)
    kw = dict(alphas=[0.1, 0.5], l1_ratios=[0.2, 0.8], inner="kfold:3", select="per_target", tol=TOL,
              memory_budget=SMALL_BUDGET, preprocess=preprocess, permutations=perms)
    whole = nested_cross_val_predict(X, Y, device="cpu", **kw)
    parts = [nested_parts(X, Y, device="cpu", part=(k, n_ranks), **kw) for k in range(n_ranks)]
    t_ranges = [parallel.column_range(solved) for _, solved, _ in parts]
    assert sum(hi > lo for lo, hi in t_ranges) >= (1 if preprocess else 2)   # the inner search split too
    t_width = max(hi - lo for lo, hi in t_ranges)
    loss = parallel.merge_columns(torch.zeros(parts[0][0].shape, dtype=parts[0][0].dtype),
                                  [(parallel.column_block(l, lo, hi, t_width), lo, hi)
                                   for (l, _, _), (lo, hi) in zip(parts, t_ranges)])
    ranges = [parallel.column_range(o.solved_columns) for _, _, o in parts]
    width = max(hi - lo for lo, hi in ranges)
    outer = parallel.merge_parts(parts[0][2], [(parallel.part_block(o, lo, hi, width), lo, hi)
                                               for (_, _, o), (lo, hi) in zip(parts, ranges)])
    merged = select_grid_points(loss, outer, torch.as_tensor(Y), "per_target")
    for key in ("predictions", "choice", "alpha", "l1_ratio", "inner_loss"):
        np.testing.assert_array_equal(getattr(merged, key).numpy(), getattr(whole, key).numpy(), err_msg=key)
    assert_same_bits(merged.outer, whole.outer)


def test_nested_null_is_the_plain_fits_null(one_torch_thread):
    """nested_cross_val_predict(permutations=) fits the null in its outer pass: the same numbers
    as cross_val_predict(permutations=) (what runs without a grid search), and no second pass."""
    X, Y = make_problem(T=3)
    perms = permutations(X.shape[0], 4, seed=3)
    kw = dict(alphas=[0.1, 0.5], l1_ratios=[0.5], tol=TOL, permutations=perms, device="cpu")
    nested = nested_cross_val_predict(X, Y, inner="kfold:3", **kw)
    plain = cross_val_predict(X, Y, **kw)
    assert_same_bits(nested.outer, plain)
    assert nested.outer.null_predictions.shape == (4, 2, X.shape[0], 3)


def test_a_part_holds_only_its_columns(one_torch_thread):
    X, Y = make_problem(T=5)
    perms = permutations(X.shape[0], 2, seed=1)
    res = cross_val_predict(X, Y, permutations=perms, device="cpu", part=(1, 2), alphas=0.5,
                            memory_budget=SMALL_BUDGET)
    lo, hi = parallel.column_range(res.solved_columns)
    assert 0 < lo < hi == 15                     # the second half of the 15 columns
    cols = parallel.all_columns(res)
    assert bool((cols[..., :lo] == 0).all()) and bool((cols[..., lo:] != 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("grid", [[], ["solver.alpha=[0.5,1.0]", "solver.l1_ratio=[0.2,0.8]"]],
                         ids=["one-point", "grid"])
def test_devices_2_on_cpu_writes_what_one_process_writes(tmp_path, grid):
    """`devices=2 device=cpu`: two gloo ranks, each solving half the chunks; with one thread per
    process in both runs, every output array and score is bit for bit the one-process run's,
    and the run folder holds exactly the files of a one-process run."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPURECON_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("GPURECON_DATA_ROOT", None)
    # solver.memory_budget_gb: small enough that the 5 targets x 4 columns are several chunks
    args = ["data.n_channels=5", "data.n_words=16", "device=cpu", "solver.n_permutations=3",
            f"solver.tol={TOL}", "solver.memory_budget_gb=0.0005", *grid]
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        proc = subprocess.run([sys.executable, "-m", "gpurecon", *args, f"devices={devices}",
                               f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[devices] = (proc.stdout + proc.stderr, out)
    log2, out2 = runs[2]
    _, out1 = runs[1]
    assert "solver: 2 ranks (Lightning Fabric ddp_spawn, cpu, gloo backend, 1 CPU thread(s) each)" in log2
    assert "nothing to solve" not in log2                 # both ranks had chunks
    assert "GLOBAL_RANK" not in log2                      # rank banners stay quiet
    assert sorted(p.name for p in out1.iterdir()) == sorted(p.name for p in out2.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "devices1", "devices2"]

    for name in ("predictions.npz", "targets.npz", "embeddings.npz"):
        a, b = np.load(out1 / name), np.load(out2 / name)
        assert a.files == b.files, name
        for key in a.files:
            if key != "provenance_json":      # says whether the cache was hit: it was, in run 2
                np.testing.assert_array_equal(b[key], a[key], err_msg=f"{name}:{key}")
    s1, s2 = (json.loads((o / "summary.json").read_text()) for o in (out1, out2))
    assert s1["scores"] == s2["scores"]                   # exactly, every score and p-value
    assert s1["solver"]["n_not_converged"] == s2["solver"]["n_not_converged"] == 0


def test_rank_threads_follow_omp_num_threads_or_share_this_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert parallel.rank_threads(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert parallel.rank_threads(2) == 2 and parallel.rank_threads(8) == 1
    finally:
        torch.set_num_threads(saved)


LARGE_RESULT_SCRIPT = '''
import sys, numpy as np, torch
from gpurecon.parallel import sharded_cross_val_predict
from gpurecon.solver import cross_val_predict, permutations

def main():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 12))
    Y = X[:, :3] @ rng.standard_normal((3, 5)) + 0.5 * rng.standard_normal((24, 5))
    perms = permutations(24, 300, 1)
    kw = dict(alphas=[0.3], l1_ratios=[0.5], memory_budget=2**22)
    two = sharded_cross_val_predict(X, Y, devices=2, device="cpu", permutations=perms, **kw)
    one = cross_val_predict(X, Y, device="cpu", permutations=perms, **kw)
    assert two.null_predictions.numel() * 8 > 2**16   # larger than a pipe's buffer
    for key in ("predictions", "null_predictions", "converged", "gap_ratio", "n_iter"):
        assert torch.equal(getattr(two, key), getattr(one, key)), key
    print("IDENTICAL", tuple(two.null_predictions.shape))

if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
def test_sharded_fit_hands_over_a_result_larger_than_a_pipe(tmp_path):
    """A 300-permutation null is ~300 kB: Lightning's return pipe would block rank 0 for ever
    (it is read only after every rank exits); the result comes through a file, bit for bit the
    one-process fit (one thread per process)."""
    script = tmp_path / "large.py"
    script.write_text(LARGE_RESULT_SCRIPT)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IDENTICAL (300, 1, 24, 5)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.py", "tmp"]
    assert not any((tmp_path / "tmp").glob("gpurecon-ranks-*"))   # the handover folder is gone


def test_gather_sends_from_the_ranks_device_and_returns_cpu_tensors():
    """NCCL gathers CUDA tensors only: every tensor leaves from fabric.device (here 'meta', a
    stand-in without CUDA) and comes back on the CPU."""
    class FakeFabric:
        device = torch.device("meta")
        sent = []

        def all_gather(self, data):
            items = data.values() if isinstance(data, dict) else [data]
            self.sent += [t.device.type for t in items]

            def stack(t):
                return torch.zeros((2, *t.shape), dtype=t.dtype)
            return {k: stack(v) for k, v in data.items()} if isinstance(data, dict) else stack(data)

    fabric = FakeFabric()
    one = parallel._gather(fabric, torch.tensor([1, 2]))
    block = parallel._gather(fabric, {"pred": torch.ones(3, 4), "n_iter": torch.ones(2, dtype=torch.int32)})
    assert fabric.sent == ["meta", "meta", "meta"]
    assert one.device.type == "cpu" and one.shape == (2, 2)
    assert block["pred"].shape == (2, 3, 4) and block["n_iter"].dtype == torch.int32
    assert all(v.device.type == "cpu" for v in block.values())
