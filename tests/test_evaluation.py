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


def test_fdr_matches_scipy():
    p = torch.tensor(np.random.default_rng(2).uniform(size=30) ** 3)
    np.testing.assert_allclose(fdr_bh(p).numpy(), false_discovery_control(p.numpy()), rtol=1e-12)
