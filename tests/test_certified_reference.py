"""The certified reference itself (tests/certified_reference.py): against scikit-learn at a
tight tol on easy problems, and its certificate against planted non-optimal points."""

import certified_reference as ref
import numpy as np
import pytest
from sklearn.linear_model import ElasticNet as SkElasticNet


def _problem(seed, n=40, p=25):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + rng.uniform(-2, 2, p)
    y = X[:, :4] @ rng.standard_normal(4) + rng.standard_normal(n) + 3.0
    return X, y


@pytest.mark.parametrize("l1", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("frac", [0.5, 0.1, 0.01])
def test_matches_sklearn_at_tight_tol(l1, frac):
    X, y = _problem(int(frac * 100) + int(l1 * 10))
    alpha = frac * ref.alpha_max(X, y, l1)
    fit = ref.exact_enet(X, y, alpha, l1)
    sk = SkElasticNet(alpha=alpha, l1_ratio=l1, tol=1e-14, max_iter=200_000).fit(X, y)
    assert fit.certificate.holds()
    assert np.abs(fit.predict(X) - sk.predict(X)).max() <= 1e-8 * y.std()
    assert np.abs(fit.coef - sk.coef_).max() <= 1e-7
    # no point has a lower objective: sklearn's is not below ours beyond rounding
    Xc, yc, _, _ = ref.centre(X, y)
    assert ref.objective(Xc, yc, fit.coef, alpha, l1) <= ref.objective(Xc, yc, sk.coef_, alpha, l1) + 1e-14


def test_alpha_max_gives_zero_and_just_below_does_not():
    X, y = _problem(7)
    top = ref.alpha_max(X, y, 0.5)
    assert not ref.exact_enet(X, y, top, 0.5).coef.any()
    assert ref.exact_enet(X, y, 0.99 * top, 0.5).coef.any()


def test_certificate_rejects_perturbed_solutions():
    """Moving one active coefficient, or switching on an inactive one, breaks the certificate."""
    X, y = _problem(3)
    alpha = 0.1 * ref.alpha_max(X, y, 0.5)
    fit = ref.exact_enet(X, y, alpha, 0.5)
    Xc, yc, _, _ = ref.centre(X, y)
    on, off = np.flatnonzero(fit.coef), np.flatnonzero(fit.coef == 0)
    assert on.size and off.size
    for j, delta in ((on[0], 1e-4), (off[0], 1e-4)):
        w = fit.coef.copy()
        w[j] += delta
        cert = ref.certificate(Xc, yc, w, alpha, 0.5)
        assert not cert.holds() and cert.kkt > 1e-8
    w = fit.coef.copy()
    w[on[0]] = -w[on[0]]   # a sign flip: the gradient disagrees with the coefficient
    assert not ref.certificate(Xc, yc, w, alpha, 0.5).sign_ok


def test_zero_target_and_duplicated_columns():
    X, y = _problem(5)
    X[:, 1] = X[:, 0]
    fit = ref.exact_enet(X, np.full(len(y), 2.5), 0.1, 0.5)
    assert not fit.coef.any() and fit.intercept == 2.5
    # the lasso with a duplicated column: certified, predictions equal sklearn's
    alpha = 0.05 * ref.alpha_max(X, y, 1.0)
    fit = ref.exact_enet(X, y, alpha, 1.0)
    sk = SkElasticNet(alpha=alpha, l1_ratio=1.0, tol=1e-14, max_iter=200_000).fit(X, y)
    assert fit.certificate.holds()
    assert np.abs(fit.predict(X) - sk.predict(X)).max() <= 1e-8 * y.std()


def test_cv_uses_only_training_rows():
    """exact_cv's held-out predictions do not move when the held-out y does."""
    X, y = _problem(9, n=20)
    masks = np.ones((4, 20), dtype=bool)
    for f in range(4):
        masks[f, f * 5:(f + 1) * 5] = False
    alpha = 0.1 * ref.alpha_max(X, y, 0.5)
    p1, _ = ref.exact_cv(X, y, [alpha], 0.5, masks)
    y2 = y.copy()
    y2[:5] += 10.0
    p2, _ = ref.exact_cv(X, y2, [alpha], 0.5, masks)
    assert np.allclose(p1[0, :5], p2[0, :5], rtol=0, atol=1e-10)
    assert np.abs(p1[0, 5:] - p2[0, 5:]).max() > 1e-3
