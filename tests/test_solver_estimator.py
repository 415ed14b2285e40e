"""gpurecon.solver.ElasticNet as a scikit-learn estimator (CPU)."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import ElasticNet as SkElasticNet
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpurecon.solver import ElasticNet


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Every check of the installed scikit-learn runs; none is expected to fail. (check_array_api_input
# reports itself skipped unless SCIPY_ARRAY_API=1 is set: the solver takes numpy or torch, not
# other array-API namespaces.)
@parametrize_with_checks([ElasticNet()], expected_failed_checks=lambda est: {})
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _data(n=30, p=12, T=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + 2.0
    Y = X[:, :3] @ rng.standard_normal((3, T)) + rng.standard_normal((n, T))
    return X, Y


@pytest.mark.parametrize("multi", [False, True])
def test_attributes_match_sklearn(multi):
    X, Y = _data()
    y = Y if multi else Y[:, 0]
    ours = ElasticNet(alpha=0.1, l1_ratio=0.5, tol=1e-10).fit(X, y)
    ref = SkElasticNet(alpha=0.1, l1_ratio=0.5, tol=1e-12, max_iter=100_000).fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape
    assert np.shape(ours.intercept_) == np.shape(ref.intercept_)
    assert np.shape(ours.dual_gap_) == np.shape(ref.dual_gap_)
    assert type(ours.n_iter_) is type(ref.n_iter_)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-8)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, atol=1e-8)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), atol=1e-8)
    assert abs(ours.score(X, y) - ref.score(X, y)) < 1e-9


def test_params_roundtrip_and_clone():
    est = ElasticNet(alpha=0.3, l1_ratio=0.2, device="cpu", dtype="float32")
    assert est.get_params()["alpha"] == 0.3
    est.set_params(alpha=2.0)
    assert clone(est).get_params() == est.get_params()


def test_torch_in_torch_out():
    X, Y = _data(seed=1)
    a = ElasticNet(alpha=0.1).fit(X, Y)
    b = ElasticNet(alpha=0.1).fit(torch.tensor(X), torch.tensor(Y))
    np.testing.assert_array_equal(a.coef_, b.coef_)
    pred = b.predict(torch.tensor(X))
    assert isinstance(pred, torch.Tensor) and pred.shape == (30, 3)
    np.testing.assert_allclose(pred.numpy(), a.predict(X), atol=1e-12)
    one = ElasticNet(alpha=0.1).fit(torch.tensor(X), torch.tensor(Y[:, 0]))
    assert one.coef_.shape == (12,) and one.predict(torch.tensor(X)).shape == (30,)
    np.testing.assert_allclose(one.predict(torch.tensor(X)).numpy(), one.predict(X), atol=1e-12)


def test_float32_input_stays_float32():
    X, Y = _data(seed=2)
    est = ElasticNet(alpha=0.1).fit(X.astype(np.float32), Y.astype(np.float32))
    assert est.coef_.dtype == np.float32


@pytest.mark.parametrize("params, match", [
    (dict(alpha=-1.0), "alpha must be"),
    (dict(l1_ratio=2.0), "l1_ratio must lie"),
    (dict(dtype="float16"), "dtype must be"),
    (dict(device="tpu"), "device must be"),
])
def test_bad_params(params, match):
    X, Y = _data()
    with pytest.raises(ValueError, match=match):
        ElasticNet(**params).fit(X, Y)
