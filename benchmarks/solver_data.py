"""Synthetic problem families for the solver benchmark (numpy only; n = 100 trials).

Each family returns ``X`` (n, p) float32 and ``Y`` (n, 127) float32 shaped like a study input:

- ``gpt2``      GPT-2-like last hidden states, unscaled: p = 768, a common offset, a low-rank
                anisotropic cloud, isotropic noise and 4 dimensions with large means and spread;
- ``fasttext``  FastText-like word vectors: p = 300, small values (|x| ~ 0.1), low-rank cloud;
- ``pca``       Wav2Vec2 after a fold-free PCA: p = 40 orthogonal, centred columns with
                geometrically falling variance (p < n: never more non-zeros than n);
- ``iid``       iid N(0, 1) features with per-column gamma scales and 3 columns x30, p = 768;
                Y = a sparse map (5 features per target) + noise + per-target offsets: the badly
                conditioned family of issue 9.

Targets of the first three are high-gamma-like trial means (an electrode profile plus a weak
effect of the embedding's leading factors plus noise, x10), as in the study.
"""

from __future__ import annotations

import numpy as np

N, C = 100, 127
FRAMES = 200
FAMILIES = ("gpt2", "fasttext", "pca", "iid")
# Designs no engine setting was tuned on (issue G): bench_solver_cv.py measures them beside the four.
NEW_FAMILIES = ("heavy_tails", "outlier_trials", "collinear", "wide_2000", "wide_10x5000", "target_scales")


def gpt2_like(n=N, p=768, seed=0):
    """GPT-2-like embeddings and their leading factors (n, 20)."""
    rng = np.random.default_rng(seed)
    k = 20
    factors = rng.standard_normal((n, k)) * np.geomspace(3, 0.3, k)
    X = 0.3 * rng.standard_normal(p) + 0.3 * factors @ (rng.standard_normal((k, p)) / np.sqrt(k))
    X += 0.15 * rng.standard_normal((n, p))
    big = rng.choice(p, 4, replace=False)
    X[:, big] = X[:, big] * 5.0 + rng.normal(0, 60, size=4)
    return X.astype(np.float32), factors


def fasttext_like(n=N, p=300, seed=3):
    """FastText-like vectors: entries ~0.1, a small common offset, a low-rank cloud."""
    rng = np.random.default_rng(seed)
    k = 20
    factors = rng.standard_normal((n, k)) * np.geomspace(3, 0.3, k)
    X = 0.02 * rng.standard_normal(p) + 0.04 * factors @ (rng.standard_normal((k, p)) / np.sqrt(k))
    X += 0.05 * rng.standard_normal((n, p))
    return X.astype(np.float32), factors


def pca_like(n=N, p=40, seed=4):
    """PCA scores: p orthogonal centred columns, standard deviations from 20 down to 1."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, p)))
    q -= q.mean(0)
    q, _ = np.linalg.qr(q)
    X = q * np.sqrt(n) * np.geomspace(20, 1, p)
    factors = X[:, :20] / X[:, :20].std(0) * np.geomspace(3, 0.3, 20)
    return X.astype(np.float32), factors


def trial_targets(factors, n_channels=C, seed=1):
    """High-gamma-like trial means: an electrode profile plus a weak embedding effect."""
    rng = np.random.default_rng(seed)
    n, k = factors.shape
    profile = rng.gamma(2.0, 1.0, size=n_channels)
    Y = profile + factors @ (0.05 * rng.standard_normal((k, n_channels))) + 0.5 * rng.standard_normal((n, n_channels))
    return (10.0 * Y).astype(np.float32)


def iid_scaled(n=N, p=768, n_channels=C, seed=5):
    """iid features, gamma column scales, 3 columns x30; Y = sparse map + noise + offsets."""
    rng = np.random.default_rng(seed)
    scale = rng.gamma(2.0, 1.0, size=p)
    scale[rng.choice(p, 3, replace=False)] *= 30.0
    Z = rng.standard_normal((n, p))
    X = Z * scale
    W = np.zeros((p, n_channels))
    for t in range(n_channels):
        W[rng.choice(p, 5, replace=False), t] = rng.standard_normal(5)
    Y = Z @ W + rng.standard_normal((n, n_channels)) + rng.gamma(2.0, 5.0, size=n_channels)
    return X.astype(np.float32), Y.astype(np.float32)


def family(name: str):
    """(X, Y) of a family with 127 targets; slice ``Y[:, :T]`` for fewer."""
    if name == "gpt2":
        X, f = gpt2_like()
        return X, trial_targets(f)
    if name == "fasttext":
        X, f = fasttext_like()
        return X, trial_targets(f, seed=6)
    if name == "pca":
        X, f = pca_like()
        return X, trial_targets(f, seed=7)
    if name == "iid":
        return iid_scaled()
    raise ValueError(f"family must be one of {FAMILIES}, got {name!r}")


def _sparse_targets(rng, Z, n_targets, k=10, noise=1.0):
    """Y = Z B (k features per target, signal std 1) + noise."""
    n, p = Z.shape
    Zc = Z - Z.mean(0)
    Y = np.zeros((n, n_targets))
    for t in range(n_targets):
        s = Zc[:, rng.choice(p, min(k, p), replace=False)] @ rng.standard_normal(min(k, p))
        Y[:, t] = s / s.std() + noise * rng.standard_normal(n)
    return Y


def new_family(name: str, n_targets: int = 12, seed: int = 21):
    """(X, Y) float64 of a design family no setting was tuned on:

    - ``heavy_tails``     Student-t (df 2) entries, n=100, p=768: held-out rows with values
                          many times a column's training norm;
    - ``outlier_trials``  GPT-2-like X with 3 trials scaled x50 about the mean (numerals,
                          clitics: words whose embeddings sit far from the others);
    - ``collinear``       384 pairs of columns with correlation 0.999;
    - ``wide_2000``       factor model n=100, p=2000;
    - ``wide_10x5000``    factor model n=10, p=5000;
    - ``target_scales``   GPT-2-like X, target scales spanning 1e3 (logspace(-1.5, 1.5)).
    """
    rng = np.random.default_rng(seed)
    if name == "heavy_tails":
        X = rng.standard_t(2, size=(N, 768))
        return X, _sparse_targets(rng, X, n_targets)
    if name == "outlier_trials":
        X = gpt2_like(seed=seed)[0].astype(np.float64)
        Y = _sparse_targets(rng, X, n_targets)
        rows = rng.choice(N, 3, replace=False)
        X[rows] = X.mean(0) + 50.0 * (X[rows] - X.mean(0))
        return X, Y
    if name == "collinear":
        Z = rng.standard_normal((N, 384))
        X = np.empty((N, 768))
        X[:, 0::2] = Z
        X[:, 1::2] = 0.999 * Z + np.sqrt(1 - 0.999 ** 2) * rng.standard_normal((N, 384))
        return X, _sparse_targets(rng, Z, n_targets)
    if name in ("wide_2000", "wide_10x5000"):
        n, p = (100, 2000) if name == "wide_2000" else (10, 5000)
        F = rng.standard_normal((n, 20)) * np.geomspace(3, 0.3, 20)
        X = F @ (rng.standard_normal((20, p)) / np.sqrt(20)) + 0.5 * rng.standard_normal((n, p))
        return X, _sparse_targets(rng, X, n_targets, k=min(10, n // 2))
    if name == "target_scales":
        X = gpt2_like(seed=seed)[0].astype(np.float64)
        return X, _sparse_targets(rng, X, n_targets) * np.logspace(-1.5, 1.5, n_targets)
    raise ValueError(f"family must be one of {NEW_FAMILIES}, got {name!r}")


def frame_targets(factors, n_channels=C, frames=FRAMES, seed=2):
    """Time-resolved targets (trials, channels*frames): each channel's effect follows a smooth
    time course peaking at its own latency; noise is smooth over frames."""
    rng = np.random.default_rng(seed)
    n, k = factors.shape
    t = np.arange(frames)
    latency = rng.uniform(20, 180, n_channels)
    course = np.exp(-0.5 * ((t[None, :] - latency[:, None]) / 25.0) ** 2)             # (C, frames)
    profile = rng.gamma(2.0, 1.0, size=n_channels)
    effect = factors @ (0.05 * rng.standard_normal((k, n_channels)))                   # (n, C)
    noise = rng.standard_normal((n, n_channels, frames + 9))
    noise = np.stack([noise[..., i:i + frames] for i in range(10)]).mean(0) * np.sqrt(10) * 0.5
    Y = profile[None, :, None] * (0.5 + course[None]) + effect[:, :, None] * course[None] + noise
    return (10.0 * Y.reshape(n, n_channels * frames)).astype(np.float32)
