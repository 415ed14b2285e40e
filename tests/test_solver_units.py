"""The solver's parts on their own, against numpy / scikit-learn references: coordinate descent,
FISTA, the PDAS polish, the shared Woodbury inverse and the full duality-gap check."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import ElasticNet as SkElasticNet

from gpurecon.solver.coordinate_descent import coordinate_descent
from gpurecon.solver.fista import GramHessian, fista
from gpurecon.solver.newton import SharedInverse, bordered_pdas, pdas

pytestmark = pytest.mark.usefixtures("one_torch_thread")
F64 = torch.float64


def _loo_problem(n=30, p=12, seed=0, scaled=False):
    """Leave-one-out folds without intercept: fold i's Hessian is G - x_i x_i^T."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    if scaled:
        X *= rng.gamma(2.0, 0.5, p)
        X[:, 0] *= 30
    y = X[:, :3] @ np.array([1.0, -2.0, 0.5]) + 0.5 * rng.standard_normal(n)
    return X, y


def _sklearn_folds(X, y, alpha, l1_ratio, folds):
    out = []
    for i in folds:
        keep = np.arange(len(y)) != i
        m = SkElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-12, max_iter=200_000)
        out.append(m.fit(X[keep], y[keep]).coef_)
    return np.array(out)


def _gram_form(X, y, alpha, l1_ratio, folds):
    """(K=1, m=len(folds)) Gram-form inputs of the LOO problems."""
    n = len(y)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    gram = (Xt.T @ Xt)[None]
    down = Xt[folds][None, :, None, :]                                   # (1, m, 1, p)
    c = torch.stack([Xt.T @ yt - Xt[i] * yt[i] for i in folds])[None]
    yy = torch.tensor([[float(yt @ yt - yt[i] ** 2) for i in folds]], dtype=F64)
    a = torch.full_like(yy, alpha * l1_ratio * (n - 1))
    b = torch.full_like(yy, alpha * (1 - l1_ratio) * (n - 1))
    return gram, down, c, yy, a, b


@pytest.mark.parametrize("l1_ratio", [1.0, 0.5, 0.01])
@pytest.mark.parametrize("scaled", [False, True])
def test_coordinate_descent_matches_sklearn_per_fold(l1_ratio, scaled):
    X, y = _loo_problem(scaled=scaled)
    folds = [0, 7, 29]
    alpha = 0.05
    gram, down, c, yy, a, b = _gram_form(X, y, alpha, l1_ratio, folds)
    w0 = torch.zeros_like(c)
    res = coordinate_descent(gram=gram, downdates=down, c=c, yy=yy, a=a, b=b, w0=w0,
                             target=1e-11 * yy, max_epochs=torch.full(yy.shape, 5_000))
    assert bool(res.done.all())
    ref = _sklearn_folds(X, y, alpha, l1_ratio, folds)
    np.testing.assert_allclose(res.coef[0].numpy(), ref, atol=1e-6 * np.abs(ref).max())


def test_coordinate_descent_respects_the_epoch_allowance():
    X, y = _loo_problem(scaled=True)
    gram, down, c, yy, a, b = _gram_form(X, y, 1e-4, 1.0, [0])
    res = coordinate_descent(gram=gram, downdates=down, c=c, yy=yy, a=a, b=b, w0=torch.zeros_like(c),
                             target=torch.zeros_like(yy), max_epochs=torch.full(yy.shape, 3), check_every=1)
    assert int(res.n_epochs.max()) == 3 and not bool(res.done.any())


def test_fista_matches_sklearn_per_fold():
    X, y = _loo_problem()
    folds = [1, 2, 3, 4]
    gram, down, c, yy, a, b = _gram_form(X, y, 0.05, 0.5, folds)
    res = fista(GramHessian(gram, down), c=c, yy=yy, a=a, b=b, w0=torch.zeros_like(c), target=1e-13 * yy,
                max_iter=100_000)
    assert bool(res.done.all())
    ref = _sklearn_folds(X, y, 0.05, 0.5, folds)
    np.testing.assert_allclose(res.coef[0].numpy(), ref, atol=1e-5 * np.abs(ref).max())


def test_fista_empty_working_set_is_finite_and_done():
    """An all-padding working set (zero Gram) must not produce NaN or spend iterations."""
    K, m, s = 2, 3, 4
    zeros = torch.zeros((K, m, s), dtype=torch.float32)
    yy = torch.ones((K, m), dtype=F64)
    res = fista(GramHessian(torch.zeros((K, s, s)), None), c=zeros, yy=yy, a=yy, b=yy, w0=zeros, target=1e-4 * yy,
                max_iter=200)
    assert torch.isfinite(res.coef).all() and bool(res.done.all()) and int(res.n_iter.max()) == 0


def test_shared_inverse_applies_every_fold_inverse():
    rng = np.random.default_rng(1)
    n, s, F = 20, 6, 4
    X = rng.standard_normal((n, s))
    G = torch.from_numpy(X.T @ X)[None]
    U = torch.from_numpy(rng.standard_normal((1, F, 2, s)) * 0.3)
    ridge = torch.tensor([0.7], dtype=F64)
    b_class = torch.tensor([3.0], dtype=F64)
    inv = SharedInverse(G, torch.ones((1, s), dtype=torch.bool), b_class, torch.zeros((1, F), dtype=torch.long),
                        U, ridge)
    vec = torch.from_numpy(rng.standard_normal((1, F, s)))
    got = inv.apply(vec)[0].numpy()
    for f in range(F):
        u = U[0, f].numpy()
        h = X.T @ X - u.T @ u + 0.7 * 3.0 * np.eye(s)
        np.testing.assert_allclose(got[f], np.linalg.solve(h, vec[0, f].numpy()), rtol=1e-9, atol=1e-12)
    assert bool(inv.ok.all())


def test_pdas_from_the_right_support_is_exact():
    X, y = _loo_problem()
    folds = [0, 5]
    n, alpha, l1 = len(y), 0.05, 0.5
    gram, down, c, _, a, b = _gram_form(X, y, alpha, l1, folds)
    ref = _sklearn_folds(X, y, alpha, l1, folds)
    start = torch.from_numpy(ref)[None] * 0.9                          # right signs, wrong values
    coef, stable = pdas(gram, downdates=down, b_class=torch.tensor([float(n - 1)], dtype=F64),
                        fold_class=torch.zeros((1, len(folds)), dtype=torch.long),
                        ridge=torch.tensor([alpha * (1 - l1)], dtype=F64), c=c, a=a, b=b, active=start != 0,
                        sign=torch.sign(start), fixed=torch.zeros((1, X.shape[1]), dtype=torch.bool), rounds=4)
    assert bool(stable.all())
    np.testing.assert_allclose(coef[0].numpy(), ref, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("alpha,l1_ratio", [(0.02, 0.5), (0.05, 0.9), (0.01, 0.2)])
def test_bordered_pdas_from_the_full_data_pattern_is_exact_on_every_fold(alpha, l1_ratio):
    """Leave-one-out and leave-two-out folds (two training sizes: two fold classes) start from
    the full-data fit's pattern; each fold's own entries and drops are its bordered system."""
    X, y = _loo_problem(n=30, p=24, seed=3)
    n, p = X.shape
    held = [[i] for i in range(0, 30, 3)] + [[1, 2], [4, 8], [10, 20]]
    F = len(held)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    down = torch.zeros((1, F, 2, p), dtype=F64)
    c = torch.zeros((1, F, p), dtype=F64)
    for f, h in enumerate(held):
        down[0, f, :len(h)] = Xt[h]
        c[0, f] = Xt.T @ yt - Xt[h].T @ yt[h]
    n_f = torch.tensor([float(n - len(h)) for h in held], dtype=F64)
    sizes, cls = torch.unique(n_f, return_inverse=True)
    a, b = (alpha * l1_ratio * n_f)[None], (alpha * (1 - l1_ratio) * n_f)[None]
    full = SkElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(X, y)
    start = torch.from_numpy(full.coef_)[None, None].expand(1, F, p)
    ref = []
    for h in held:
        keep = np.setdiff1d(np.arange(n), h)
        m = SkElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-12, max_iter=200_000)
        ref.append(m.fit(X[keep], y[keep]).coef_)
    ref = np.array(ref)
    moved_in = ((ref != 0) & (full.coef_ == 0)).any(1)
    moved_out = ((ref == 0) & (full.coef_ != 0)).any(1)
    assert moved_in.any() and moved_out.any()        # the folds' own moves are exercised both ways
    coef, stable = bordered_pdas((Xt.T @ Xt)[None], downdates=down, b_class=sizes, fold_class=cls[None],
                                 ridge=torch.tensor([alpha * (1 - l1_ratio)], dtype=F64), c=c, a=a, b=b,
                                 active=start != 0, sign=torch.sign(start), fixed=torch.zeros((1, p), dtype=torch.bool),
                                 rounds=12)
    assert bool(stable.all())
    np.testing.assert_allclose(coef[0].numpy(), ref, atol=1e-9 * np.abs(ref).max())
    assert ((coef[0].numpy() != 0) == (ref != 0)).all()
    # a fold whose moves outgrow max_border sits the rounds out (never called stable: the
    # caller solves it on its own); the others are still exact
    moves = ((ref != 0) != (full.coef_ != 0)).sum(1)
    coef2, stable2 = bordered_pdas((Xt.T @ Xt)[None], downdates=down, b_class=sizes, fold_class=cls[None],
                                   ridge=torch.tensor([alpha * (1 - l1_ratio)], dtype=F64), c=c, a=a, b=b,
                                   active=start != 0, sign=torch.sign(start),
                                   fixed=torch.zeros((1, p), dtype=torch.bool), rounds=12, max_border=1)
    assert not stable2[0][torch.from_numpy(moves > 1)].any() and stable2[0][torch.from_numpy(moves == 0)].all()
    ok = stable2[0].numpy()
    np.testing.assert_allclose(coef2[0].numpy()[ok], ref[ok], atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("n_done", [0, 6, 20], ids=["all open", "most open: slots", "few open: copies"])
def test_bordered_pdas_of_several_groups_is_exact_whatever_the_open_folds(n_done):
    """Two targets (two groups of one design, their working sets in different orders) under
    leave-one-out (one fold class): with every fold open, most folds open (the groups' inverses
    applied in (group, fold) slots) and few open (per-problem copies), each open fold's bordered
    answer is sklearn's optimum."""
    X0, y0 = _loo_problem(n=30, p=24, seed=3)
    X1 = X0[:, np.random.default_rng(8).permutation(X0.shape[1])]
    y1 = np.random.default_rng(8).permutation(y0) + X0[:, 5]
    n, p = X0.shape
    alpha, l1_ratio = 0.02, 0.5
    F, K = 15, 2
    held = list(range(0, 30, 2))
    Xs = [torch.from_numpy(X) for X in (X0, X1)]
    ys = [torch.from_numpy(y) for y in (y0, y1)]
    down = torch.zeros((K, F, 1, p), dtype=F64)
    c = torch.zeros((K, F, p), dtype=F64)
    for k, (Xt, yt) in enumerate(zip(Xs, ys)):
        for f, i in enumerate(held):
            down[k, f, 0] = Xt[i]
            c[k, f] = Xt.T @ yt - Xt[i] * yt[i]
    n_f = torch.full((F,), float(n - 1), dtype=F64)
    a = (alpha * l1_ratio * n_f).expand(K, F)
    b = (alpha * (1 - l1_ratio) * n_f).expand(K, F)
    start, ref = [], []
    for X, y in ((X0, y0), (X1, y1)):
        sk = dict(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-12, max_iter=200_000)
        start.append(SkElasticNet(**sk).fit(X, y).coef_)
        ref.append([SkElasticNet(**sk).fit(np.delete(X, i, 0), np.delete(y, i)).coef_ for i in held])
    start = torch.from_numpy(np.array(start))[:, None].expand(K, F, p)
    ref = np.array(ref)                                                          # (K, F, p)
    full = start.numpy()
    assert ((ref != 0) & (full == 0)).any() and ((ref == 0) & (full != 0)).any()   # entries and drops
    done = torch.zeros((K, F), dtype=torch.bool)
    done.view(-1)[torch.randperm(K * F, generator=torch.Generator().manual_seed(0))[:n_done]] = True
    coef, stable = bordered_pdas(torch.stack([Xt.T @ Xt for Xt in Xs]), downdates=down, b_class=n_f[:1],
                                 fold_class=torch.zeros((K, F), dtype=torch.long),
                                 ridge=torch.full((K,), alpha * (1 - l1_ratio), dtype=F64), c=c, a=a, b=b,
                                 active=start != 0, sign=torch.sign(start),
                                 fixed=torch.zeros((K, p), dtype=torch.bool), rounds=12, done=done)
    open_ = ~done.numpy()
    assert bool(stable.all())
    np.testing.assert_allclose(coef.numpy()[open_], ref[open_], atol=1e-9 * np.abs(ref).max())
    assert ((coef.numpy()[open_] != 0) == (ref[open_] != 0)).all()


def test_cho_solve_matches_scipy():
    """The solver's Cholesky solves (two batched triangular solves) against scipy's cho_solve."""
    import scipy.linalg

    from gpurecon.solver.newton import cho_solve

    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 7, 7))
    m = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(7)
    v = rng.standard_normal((3, 7, 2))
    got = cho_solve(torch.linalg.cholesky(torch.from_numpy(m)), torch.from_numpy(v)).numpy()
    for i in range(3):
        want = scipy.linalg.cho_solve(scipy.linalg.cho_factor(m[i], lower=True), v[i])
        np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("source", ["design Gram", "working-set Grams"])
def test_fold_grams_of_the_pattern_solves_are_the_training_rows_centred_grams(source):
    """The direct sign-pattern solves read each fold's Gram on a problem's active features from
    an all-rows Gram (the design's, or each group's on its working set, padded with a zero
    column) downdated by the held-out rows and the re-centring term: it must equal the Gram of
    the fold's own centred training rows (numpy), with padded entries exactly zero. (A wrong
    block only costs rounds - the KKT check still certifies - so it is checked here.)"""
    from gpurecon.solver.certify import _downdated_gram
    from gpurecon.solver.working_set import make_design, make_folds

    rng = np.random.default_rng(4)
    n, p, s, K = 14, 9, 5, 2
    X = rng.standard_normal((n, p)) * rng.gamma(2.0, 1.0, p) + 3.0
    design = make_design(torch.from_numpy(X), center=True)
    masks = torch.ones((3, n), dtype=torch.bool)
    masks[0, [2]] = False                    # leave-one-out-like
    masks[1, [0, 5, 11]] = False             # k-fold-like
    masks[2, [7, 8]] = False
    folds = make_folds(masks, center=True, dtype=torch.float64)
    ws = torch.tensor([[3, 1, 7, 0, p], [6, 2, 8, 4, 5]])          # group 0's last entry: padding
    # problems: (group, fold, active positions in the group's working set)
    probs = [(0, 0, [0, 2]), (0, 1, [1, 2, 3]), (1, 2, [4, 0]), (1, 0, [0, 1, 2, 3, 4]), (0, 2, [3])]
    k = max(len(a) for _, _, a in probs)
    P = len(probs)
    grp = torch.tensor([g for g, _, _ in probs])
    fold = torch.tensor([f for _, f, _ in probs])
    pos = torch.zeros((P, k), dtype=torch.long)
    valid = torch.zeros((P, k), dtype=torch.bool)
    for i, (g, _, act) in enumerate(probs):
        rest = [j for j in range(s) if j not in act]
        pos[i] = torch.tensor(act + rest[:k - len(act)])
        valid[i, :len(act)] = True
    feat = torch.where(valid, ws[grp].gather(1, pos), p)
    xe = design.X.to(F64)
    if source == "design Gram":
        shared = ((xe[:n].T @ xe[:n]).reshape(-1), None, torch.zeros((P, s), dtype=F64), grp, xe)
    else:
        xw = torch.nn.functional.pad(xe[:n][:, ws].permute(1, 0, 2), (0, 1))
        shared = (torch.bmm(xw.transpose(1, 2), xw).reshape(-1), s, torch.zeros((P, s), dtype=F64), grp, xe)
    gram, _ = _downdated_gram(shared, folds, fold, pos, feat, valid, s)
    for i, (g, f, act) in enumerate(probs):
        cols = ws[g, act].numpy()
        xt = X[masks[f].numpy()][:, cols]
        xt = xt - xt.mean(0)
        m = len(act)
        np.testing.assert_allclose(gram[i, :m, :m].numpy(), xt.T @ xt, rtol=1e-12, atol=1e-10 * np.abs(xt).max() ** 2)
        assert (gram[i, m:, :] == 0).all() and (gram[i, :, m:] == 0).all()


@pytest.mark.parametrize("l1_ratio", [1.0, 0.5])
def test_preconditioned_fista_matches_sklearn_and_needs_fewer_iterations_on_scaled_columns(l1_ratio):
    # gamma column scales and one x30 column: one step 1/L crawls along the small columns
    X, y = _loo_problem(n=40, p=12, scaled=True)
    folds = [0, 5, 39]
    gram, down, c, yy, a, b = _gram_form(X, y, 0.02, l1_ratio, folds)
    hess = GramHessian(gram, down)
    diag = torch.diagonal(gram, dim1=1, dim2=2)
    scaled_gram = gram / torch.sqrt(diag[:, :, None] * diag[:, None, :])
    lip_pre = torch.linalg.eigvalsh(scaled_gram)[:, -1]
    target = 1e-13 * yy
    kw = dict(c=c, yy=yy, a=a, b=b, w0=torch.zeros_like(c), target=target, max_iter=100_000)
    pre = fista(hess, lipschitz=lip_pre, scale=diag, **kw)
    plain = fista(hess, **kw)
    assert bool(pre.done.all()) and bool(plain.done.all())
    ref = _sklearn_folds(X, y, 0.02, l1_ratio, folds)
    np.testing.assert_allclose(pre.coef[0].numpy(), ref, atol=1e-6 * np.abs(ref).max())
    assert int(pre.n_iter.max()) * 3 < int(plain.n_iter.min())


def test_fused_dots_give_the_same_fista_with_fewer_launches():
    """The launch-bound (GPU) path's one-kernel dot products: same iterates within rounding,
    two launches fewer per iteration (the restart test and the leave-one-out downdate)."""
    from gpurecon.profiling import OpCounter

    X, y = _loo_problem()
    gram, down, c, yy, a, b = _gram_form(X, y, 0.05, 0.5, [1, 2, 3, 4])
    kw = dict(c=c, yy=yy, a=a, b=b, w0=torch.zeros_like(c), target=torch.zeros_like(yy), max_iter=50)
    with OpCounter() as plain_count:
        plain = fista(GramHessian(gram, down), **kw)
    with OpCounter() as fused_count:
        fused = fista(GramHessian(gram, down, fused_dot=True), fused_dot=True, **kw)
    np.testing.assert_allclose(fused.coef.numpy(), plain.coef.numpy(), rtol=1e-9, atol=1e-12)
    assert int(fused.n_iter.max()) == int(plain.n_iter.max()) == 50
    assert plain_count.launches - fused_count.launches >= 2 * 50


@pytest.mark.parametrize("center", [True, False])
def test_centred_kernel_is_the_fold_centring_on_both_sides(center):
    """``_centred_kernel`` forms ``C K C`` (C: the fold's centring on its training rows, zero
    on held-out rows) from ``K`` by one rank-2 update and a mask: against numpy's C K C."""
    from gpurecon.solver.certify import _centred_kernel

    rng = np.random.default_rng(8)
    P, n = 3, 9
    r = rng.standard_normal((P, 5, n))
    kern = r.transpose(0, 2, 1) @ r
    train = np.ones((P, n))
    train[0, 4] = train[1, [0, 3, 8]] = 0.0
    got = _centred_kernel(torch.from_numpy(kern.copy()), torch.from_numpy(train),
                          torch.from_numpy(train.sum(1)), center).numpy()
    for i in range(P):
        d = train[i]
        c = np.diag(d) - (np.outer(d, d) / d.sum() if center else 0.0)
        np.testing.assert_allclose(got[i], c @ kern[i] @ c, rtol=1e-12, atol=1e-12 * np.abs(kern[i]).max())


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("adaptive", [False, True])
def test_wide_sign_pattern_solves_match_numpy_on_each_folds_training_rows(center, adaptive):
    """Active sets wider than the training rows take the n x n Woodbury form with the fold's
    centring applied in n-space (``C R^T``, ``C K C``) and refinement steps that stop early on
    the CPU (``adaptive``) once the stationarity residual is negligible: each solution must
    equal numpy's solve of ``(X_A^T X_A + b I) w = X_A^T y_c - a s`` on the fold's own centred
    training rows, and its stationarity residual (recomputed in numpy) must lie inside the
    certificate's tolerance ``a KKT_RTOL``, for a tiny ridge term (where only the refinement
    gets it there: ~30x outside without) and a large one."""
    from gpurecon.solver.certify import KKT_RTOL, _pattern_solve
    from gpurecon.solver.working_set import make_design, make_folds

    rng = np.random.default_rng(9)
    n, p, s = 10, 24, 16
    X = rng.standard_normal((n, p)) * rng.gamma(2.0, 1.0, p) + 2.0
    y = rng.standard_normal(n)
    design = make_design(torch.from_numpy(X), center=center)
    masks = torch.ones((3, n), dtype=torch.bool)
    masks[0, [3]] = False
    masks[1, [0, 4, 7]] = False
    folds = make_folds(masks, center=center, dtype=torch.float64)
    # problems: (fold, working set, active positions, ridge b)
    probs = [(0, rng.permutation(p)[:s], list(range(14)), 1e-4), (1, rng.permutation(p)[:s], list(range(2, 16)), 3.0),
             (2, rng.permutation(p)[:s], list(range(13)), 1e-3), (1, rng.permutation(p)[:s], list(range(1, 15)), 1e-2)]
    P = len(probs)
    fold = torch.tensor([f for f, _, _, _ in probs])
    ws = torch.from_numpy(np.stack([w for _, w, _, _ in probs]))
    act = torch.zeros((P, s), dtype=torch.bool)
    for i, (_, _, A, _) in enumerate(probs):
        act[i, A] = True
    sign = torch.from_numpy(rng.choice([-1.0, 1.0], (P, s)))
    a = torch.full((P,), 0.3, dtype=F64)
    b = torch.tensor([bb for _, _, _, bb in probs], dtype=F64)
    tr = masks.numpy()
    yc = np.zeros((P, n))
    for i, (f, _, _, _) in enumerate(probs):
        yc[i, tr[f]] = y[tr[f]] - (y[tr[f]].mean() if center else 0.0)
    xt = design.X[:n].T.to(F64)
    got, ok = _pattern_solve(xt, folds, fold, ws, act, sign, torch.from_numpy(yc), a, b, p, None, adaptive=adaptive)
    assert bool(ok.all())
    for i, (f, w, A, bb) in enumerate(probs):
        xf = X[tr[f]][:, w[A]]
        xf = xf - (xf.mean(0) if center else 0.0)
        rhs = xf.T @ yc[i, tr[f]] - 0.3 * sign[i, A].numpy()
        want = np.linalg.solve(xf.T @ xf + bb * np.eye(len(A)), rhs)
        np.testing.assert_allclose(got[i, A].numpy(), want, rtol=1e-7, atol=1e-7 * np.abs(want).max())
        w_a = got[i, A].numpy()
        assert np.abs(rhs - xf.T @ (xf @ w_a) - bb * w_a).max() <= 0.3 * KKT_RTOL
        assert (got[i][~act[i]] == 0).all()


@pytest.mark.parametrize("wide", [False, True])
def test_gpu_path_pattern_solves_read_the_host_once_when_the_caller_knows_count_width_and_ridge(wide):
    """The GPU path's sign-pattern solves (one batch, ``spread=0``), given the open problems'
    count, a bound on their width and that every problem has a ridge term (all from the round's
    one read), read the host once: the drop loop's check (after its first two solves). Without
    them each batch reads its widest set and, in the n x n Woodbury form (sets wider than the
    training rows), each solve whether every ridge term is positive. The solutions are numpy's
    per-fold solves either way."""
    from gpurecon.profiling import OpCounter
    from gpurecon.solver.certify import _solve_patterns
    from gpurecon.solver.working_set import Folds, make_design, make_folds

    rng = np.random.default_rng(5)
    n, p, s, K = 10, 24, 16, 2
    k = 14 if wide else 6                                   # active features: above / below n
    X = rng.standard_normal((n, p)) * rng.gamma(2.0, 1.0, p)
    Y = rng.standard_normal((n, K))
    design = make_design(torch.from_numpy(X), center=True)
    masks = torch.ones((3, n), dtype=torch.bool)
    masks[0, [3]] = False
    masks[1, [0, 4, 7]] = False
    masks[2, [9]] = False
    folds = make_folds(masks, center=True, dtype=F64)
    f64 = Folds(folds.train, folds.n_train, folds.held_out, folds.center)
    F = masks.shape[0]
    ws = torch.from_numpy(np.stack([rng.permutation(p)[:s] for _ in range(K)]))
    active = torch.zeros((K, F, s), dtype=torch.bool)
    active[:, :, :k] = True
    tr = masks.numpy()
    yc = np.zeros((K, F, n))
    for g in range(K):
        for f in range(F):
            yc[g, f, tr[f]] = Y[tr[f], g] - Y[tr[f], g].mean()
    a = torch.full((K, F), 1e-8, dtype=F64)                 # tiny l1: the ridge solution's signs hold
    b = torch.full((K, F), 0.5, dtype=F64)
    sign = torch.zeros((K, F, s), dtype=F64)
    want = np.zeros((K, F, k))
    for g in range(K):
        for f in range(F):
            xf = X[tr[f]][:, ws[g, :k].numpy()]
            xf = xf - xf.mean(0)
            m = xf.T @ xf + 0.5 * np.eye(k)
            sg = np.sign(np.linalg.solve(m, xf.T @ yc[g, f, tr[f]]))
            sign[g, f, :k] = torch.from_numpy(sg)
            want[g, f] = np.linalg.solve(m, xf.T @ yc[g, f, tr[f]] - 1e-8 * sg)
    open_ = torch.ones((K, F), dtype=torch.bool)
    yct = torch.from_numpy(yc)
    with OpCounter() as told:
        x, solved = _solve_patterns(design, f64, ws, active, sign, yct, a, b, open_, 2 ** 25, spread=0.0,
                                    count=K * F, width=k, ridged=True)
    with OpCounter() as untold:
        x2, _ = _solve_patterns(design, f64, ws, active, sign, yct, a, b, open_, 2 ** 25, spread=0.0, count=K * F)
    assert bool(solved.all())
    np.testing.assert_allclose(x[:, :, :k].numpy(), want, rtol=1e-9, atol=1e-12)
    assert (x[:, :, k:] == 0).all()
    assert torch.equal(x, x2)
    assert told.syncs == 1, told.sync_by_op
    assert untold.syncs == (4 if wide else 2), untold.sync_by_op


@pytest.mark.parametrize("classes", [1, 2])
@pytest.mark.parametrize("lowrank", [False, True])
def test_shared_inverse_blocks_are_each_folds_inverse(lowrank, classes):
    """``SharedInverse.block`` (the zero-constraint systems of the shared-inverse rounds) and
    ``apply`` must be each fold's ``(X_D^T X_D - U_f^T U_f + b_f I)^-1`` on the group's domain D,
    in the explicit s x s form and in the low-rank n x n form (working sets wider than n),
    with folds of one training size and of two (two ridge classes). A wrong block costs rounds only -
    the certificate repairs it - so it is checked here."""
    rng = np.random.default_rng(11)
    K, n, s, F, r = 2, 6, 10, 4, 2
    X = rng.standard_normal((K, n, s))
    dom = np.ones((K, s), dtype=bool)
    dom[0, [2, 7]] = False
    # each fold's downdate rows are rows of X (held out), so every fold's Hessian stays SPD
    U = np.stack([np.stack([X[k][[f, (f + 2) % n]] for f in range(F)]) for k in range(K)]) * dom[:, None, None, :]
    ridge = np.array([0.7, 0.2])
    b_class = np.array([5.0, 4.0][:classes])
    fold_class = np.array([[0, 1, 0, 1], [1, 1, 0, 0]]) % classes
    xd = X * dom[:, None, :]
    cols = torch.from_numpy(xd) if lowrank else torch.from_numpy(xd.transpose(0, 2, 1) @ xd)
    inv = SharedInverse(cols, torch.from_numpy(dom), torch.from_numpy(b_class), torch.from_numpy(fold_class),
                        torch.from_numpy(U), torch.from_numpy(ridge), lowrank=lowrank)
    idx = np.array([[[0, 3, 5], [1, 4, 9], [3, 6, 8], [0, 1, 9]], [[2, 7, 0], [5, 6, 1], [9, 8, 3], [4, 2, 6]]])
    got = inv.block(torch.from_numpy(idx)).numpy()
    vec = rng.standard_normal((K, F, s)) * dom[:, None, :]
    applied = inv.apply(torch.from_numpy(vec)).numpy()
    for k in range(K):
        d = np.flatnonzero(dom[k])
        for f in range(F):
            u = U[k, f][:, d]
            h = xd[k][:, d].T @ xd[k][:, d] - u.T @ u + ridge[k] * b_class[fold_class[k, f]] * np.eye(len(d))
            q = np.zeros((s, s))
            q[np.ix_(d, d)] = np.linalg.inv(h)
            np.testing.assert_allclose(got[k, f], q[np.ix_(idx[k, f], idx[k, f])], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(applied[k, f][d], q[np.ix_(d, d)] @ vec[k, f][d], rtol=1e-9, atol=1e-12)
    assert bool(inv.ok.all())
