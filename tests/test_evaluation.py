import numpy as np
import pytest
import torch
from scipy.stats import false_discovery_control
from sklearn.metrics import r2_score

from gpurecon.evaluation import (fdr_bh, permutation_p_value, scores_across_electrodes,
                                 scores_per_electrode, training_mean_predictions)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(12, 9)) + rng.normal(size=9)
    pred = true + rng.normal(scale=0.7, size=true.shape)
    return pred, true


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_across_electrodes_match_numpy_and_sklearn(pair, dtype):
    pred, true = pair
    s = scores_across_electrodes(torch.tensor(pred, dtype=dtype), torch.tensor(true, dtype=dtype))
    for t in range(true.shape[0]):
        assert s["pcc"][t].item() == pytest.approx(np.corrcoef(pred[t], true[t])[0, 1], abs=1e-6)
        assert s["r2"][t].item() == pytest.approx(r2_score(true[t], pred[t]), abs=1e-5)


def test_per_electrode_match_numpy_and_sklearn(pair):
    pred, true = pair
    s = scores_per_electrode(torch.tensor(pred), torch.tensor(true))
    for c in range(true.shape[1]):
        assert s["pcc"][c].item() == pytest.approx(np.corrcoef(pred[:, c], true[:, c])[0, 1], abs=1e-12)
    np.testing.assert_allclose(s["r2"].numpy(), r2_score(true, pred, multioutput="raw_values"), atol=1e-12)


def test_constant_profile_gives_nan_not_a_number():
    s = scores_across_electrodes(torch.ones(2, 5), torch.ones(2, 5))
    assert torch.isnan(s["pcc"]).all() and torch.isnan(s["r2"]).all()


def test_training_mean_baseline_equals_loop():
    rng = np.random.default_rng(1)
    Y = rng.normal(size=(10, 4))
    masks = ~np.eye(10, dtype=bool)  # leave-one-out
    base = training_mean_predictions(torch.tensor(Y), torch.tensor(masks)).numpy()
    for i in range(10):
        np.testing.assert_allclose(base[i], Y[masks[i]].mean(0), rtol=1e-12)
    kfold = np.ones((2, 10), dtype=bool)
    kfold[0, :5] = False
    kfold[1, 5:] = False
    base = training_mean_predictions(torch.tensor(Y), torch.tensor(kfold)).numpy()
    np.testing.assert_allclose(base[:5], np.broadcast_to(Y[5:].mean(0), (5, 4)))


def test_training_mean_rejects_overlapping_folds():
    with pytest.raises(ValueError, match="train_masks"):
        training_mean_predictions(torch.zeros(4, 2), torch.zeros(2, 4, dtype=torch.bool))


def test_permutation_p_value_counts_ties_conservatively():
    null = torch.tensor([[0.1], [0.5], [0.3], [0.5]])
    p = permutation_p_value(torch.tensor([0.5]), null)
    assert p.item() == pytest.approx((1 + 2) / (1 + 4))
    p = permutation_p_value(torch.tensor([float("nan"), 0.0]), null.expand(4, 2))
    assert torch.isnan(p[0]) and p[1].item() == 1.0


@pytest.mark.parametrize("observed", [0.3, -0.02, 0.0, -2.5])
def test_permutation_p_value_counts_rounding_ties_as_ties(observed):
    # A model shrunk to the baseline: the observed score and every null value are the same
    # number up to float64 rounding. Whether rounding put the null 1 ulp above or below must
    # not decide p: every such null value is a tie (p = 1), as exact equality gives.
    obs = torch.tensor([observed], dtype=torch.float64)
    ulp = np.spacing(max(abs(observed), np.finfo(np.float64).tiny))
    null = obs + torch.tensor([[-ulp], [ulp], [-2 * ulp], [0.0], [-ulp]], dtype=torch.float64)
    assert permutation_p_value(obs, null).item() == 1.0
    # a real difference (far above rounding) is still not a tie
    null = obs + torch.tensor([[-1e-6], [1e-6], [-1e-3], [0.0], [-1e-6]], dtype=torch.float64)
    assert permutation_p_value(obs, null).item() == pytest.approx((1 + 2) / (1 + 5))


def test_fdr_matches_scipy():
    p = torch.tensor(np.random.default_rng(2).uniform(size=30) ** 3)
    np.testing.assert_allclose(fdr_bh(p).numpy(), false_discovery_control(p.numpy()), rtol=1e-12)


# --------------------------------------------------------------------------- permutation null


def test_permutations_against_an_independent_generator():
    from gpurecon.solver import permutations

    n, k = 30, 50
    perms = permutations(n, k, seed=7)
    assert perms.shape == (k, n) and perms.dtype == np.int64
    assert (np.sort(perms, axis=1) == np.arange(n)).all()              # each row a permutation
    assert len({tuple(row) for row in perms}) == k                       # rows distinct
    assert not (perms == np.arange(n)).all(1).any()                      # none is the identity
    np.testing.assert_array_equal(perms, permutations(n, k, seed=7))     # seeded, reproducible
    assert not np.array_equal(perms, permutations(n, k, seed=8))
    rng = np.random.default_rng(7)                                       # the documented generator
    np.testing.assert_array_equal(perms, np.stack([rng.permutation(n) for _ in range(k)]))


def _sklearn_loo_predictions(X, Y, alpha, l1_ratio):
    from sklearn.linear_model import ElasticNet

    out = np.empty_like(Y)
    for i in range(len(Y)):
        train = np.arange(len(Y)) != i
        est = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-10, max_iter=100000)
        out[i] = est.fit(X[train], Y[train]).predict(X[i:i + 1])[0]
    return out


def test_null_p_values_and_quantiles_match_sklearn_fits_on_permuted_targets():
    from gpurecon.evaluation import evaluate, null_distribution
    from gpurecon.solver import cross_val_predict, permutations

    rng = np.random.default_rng(3)
    n, p, T, P = 14, 4, 5, 6
    X = rng.normal(size=(n, p))
    Y = X @ rng.normal(size=(p, T)) * 0.5 + rng.normal(size=(n, T)) + rng.normal(size=T) * 3
    perms = permutations(n, P, seed=1)
    res = cross_val_predict(X, Y, alphas=0.1, l1_ratios=0.5, permutations=perms, tol=1e-10,
                            max_iter=100000)
    Yt = torch.tensor(Y)
    null = null_distribution(null_pred=res.null_predictions[:, 0], Y=Yt, permutations=perms)
    ev = evaluate(pred=res.predictions[0], Y=Yt,
                  baseline=training_mean_predictions(Yt, torch.tensor(~np.eye(n, dtype=bool))), null=null)
    ref_pcc, ref_r2, ref_elec = [], [], []
    for perm in perms:                          # the reference: sklearn fitted on Y[perm]
        Yp = Y[perm]
        pred = _sklearn_loo_predictions(X, Yp, 0.1, 0.5)
        ref_pcc.append(np.mean([np.corrcoef(pred[i], Yp[i])[0, 1] for i in range(n)]))
        ref_r2.append(np.mean([r2_score(Yp[i], pred[i]) for i in range(n)]))
        ref_elec.append([np.corrcoef(pred[:, c], Yp[:, c])[0, 1] for c in range(T)])
    ref_pcc, ref_r2, ref_elec = map(np.array, (ref_pcc, ref_r2, ref_elec))
    np.testing.assert_allclose(null.pcc_across_electrodes.numpy(), ref_pcc, atol=1e-6)
    np.testing.assert_allclose(null.r2_across_electrodes.numpy(), ref_r2, atol=1e-6)
    np.testing.assert_allclose(null.pcc_per_electrode.numpy(), ref_elec, atol=1e-6)
    s = ev.summary()
    assert s["null_pcc_across_electrodes_95"] == pytest.approx(np.quantile(ref_pcc, 0.95), abs=1e-6)
    assert s["null_r2_across_electrodes_95"] == pytest.approx(np.quantile(ref_r2, 0.95), abs=1e-6)
    assert s["p_pcc_across_electrodes"] == pytest.approx(
        (1 + (ref_pcc >= s["pcc_across_electrodes"]).sum()) / (1 + P))
    obs = np.array([np.corrcoef(res.predictions[0][:, c].numpy(), Y[:, c])[0, 1] for c in range(T)])
    ref_p = (1 + (ref_elec >= obs).sum(0)) / (1 + P)
    np.testing.assert_allclose(ev.electrode_p.numpy(), ref_p)
    np.testing.assert_allclose(ev.electrode_q.numpy(), false_discovery_control(ref_p))
    # scoring the null against unpermuted Y would be a different distribution
    wrong = null_distribution(null_pred=res.null_predictions[:, 0], Y=Yt,
                              permutations=np.tile(np.arange(n), (P, 1)))
    assert not np.allclose(wrong.pcc_across_electrodes.numpy(), ref_pcc, atol=1e-3)


def test_kfold_without_null_gives_pearson_t_p_values_like_scipy():
    from scipy.stats import pearsonr

    from gpurecon.evaluation import evaluate

    pred, true = (torch.tensor(a) for a in _pair_arrays())
    ev = evaluate(pred=pred, Y=true, baseline=true.mean(0).expand_as(true), cv="kfold")
    ref = [pearsonr(pred[:, c].numpy(), true[:, c].numpy(), alternative="greater").pvalue
           for c in range(true.shape[1])]
    np.testing.assert_allclose(ev.electrode_p.numpy(), ref, rtol=1e-9)
    assert ev.p_source == "pearson_t"
    assert evaluate(pred=pred, Y=true, baseline=true.mean(0).expand_as(true), cv="loo").electrode_p is None


def _pair_arrays():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(12, 9)) + rng.normal(size=9)
    return true + rng.normal(scale=0.7, size=true.shape), true


def test_best_of_nulls_takes_the_best_grid_point_per_permutation():
    from gpurecon.evaluation import NullDistribution

    a = NullDistribution(torch.tensor([0.1, 0.5]), torch.tensor([0.0, -1.0]),
                         torch.tensor([[0.2], [float("nan")]]))
    b = NullDistribution(torch.tensor([0.3, 0.2]), torch.tensor([-2.0, 0.4]), torch.tensor([[0.1], [0.3]]))
    best = NullDistribution.best_of([a, b])
    assert best.pcc_across_electrodes.tolist() == pytest.approx([0.3, 0.5])
    assert best.r2_across_electrodes.tolist() == pytest.approx([0.0, 0.4])
    assert best.pcc_per_electrode.flatten().tolist() == pytest.approx([0.2, 0.3])


def test_verdict_says_whether_the_model_beats_its_chance_level():
    from gpurecon.evaluation import NullDistribution, evaluate

    pred, true = (torch.tensor(a) for a in _pair_arrays())
    base = true.mean(0).expand_as(true)
    low = NullDistribution(torch.full((9,), 0.1, dtype=torch.float64), torch.zeros(9, dtype=torch.float64),
                           torch.zeros(9, 9, dtype=torch.float64))
    assert evaluate(pred=pred, Y=true, baseline=base, null=low).verdict().endswith(": above chance")
    high = NullDistribution(torch.full((9,), 0.999, dtype=torch.float64), torch.zeros(9, dtype=torch.float64),
                            torch.zeros(9, 9, dtype=torch.float64))
    line = evaluate(pred=pred, Y=true, baseline=base, null=high).verdict()
    assert line.endswith("NOT above chance") and "p=1" in line
