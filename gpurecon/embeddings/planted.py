"""The planted control: on synthetic data, the ground-truth word features themselves.

The synthetic dataset (:mod:`gpurecon.data.synthetic`) drives each channel's high gamma with
a known linear map of per-word feature vectors. Embedding the trials with those very vectors
shows what perfect features recover; ``noise`` degrades them to see how the scores fall.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import DataError, ModelError
from .base import Embedder

log = logging.getLogger(__name__)


def load_ground_truth(root, subject) -> dict:
    """The synthetic sidecar of ``subject`` (lazy import: the data stage owns the format)."""
    from ..data import load_ground_truth as load

    return load(root, subject)


class PlantedEmbedder(Embedder):
    """Ground-truth word features of a synthetic recording (plus optional seeded noise).

    Parameters
    ----------
    noise : float
        Standard deviation of the added Gaussian noise, in units of the standard deviation
        of the planted features (0: the exact features; 1: noise as large as the signal).
    seed : int
        Seed of the noise (``numpy.random.default_rng(seed)``).
    """

    name = "planted"
    cacheable = False  # reading the sidecar is cheaper than a cache entry

    def __init__(self, noise: float = 0.0, seed: int = 0):
        super().__init__()
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not np.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be a number >= 0 (a fraction of the features' std), got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.noise = float(noise)
        self.seed = int(seed)

    def _describe(self, recording, device, cache):
        if recording.source != "synthetic" or recording.root is None:
            raise ModelError(f"model=planted needs synthetic data: {recording.subject} is a "
                             f"{recording.source!r} recording without planted ground truth. Use "
                             f"data=synthetic, or a real model (fasttext, gpt2, wav2vec2)")
        meta = dict(checkpoint="ground truth", checkpoint_id=f"groundtruth:{recording.root}:{recording.subject}",
                    revision=None, layer=None, pooling=None, dtype="float32", untrained=False,
                    fold_preprocessing=None, pca_variance=None, noise=self.noise, seed=self.seed)
        return {}, meta

    def _load(self, device, cache):
        return True  # nothing to load: the features are read per recording

    def _compute(self, _, recording, device, meta):
        truth = load_ground_truth(recording.root, recording.subject)
        missing = [k for k in ("vocabulary", "word_features") if k not in truth]
        if missing:
            raise DataError(f"{recording.subject}: the synthetic ground truth lacks {missing}")
        vocabulary = [str(w) for w in truth["vocabulary"]]
        features = np.asarray(truth["word_features"], dtype=np.float64)
        if "words" in truth and [str(w) for w in truth["words"]] != list(recording.trials.word):
            raise DataError(f"{recording.subject}: the ground truth's trial words differ from the "
                            f"recording's events: the sidecar belongs to another dataset")
        row = {w: i for i, w in enumerate(vocabulary)}
        unknown = sorted({w for w in recording.trials.word if w not in row})
        if unknown:
            raise DataError(f"{recording.subject}: words {unknown[:5]} are not in the planted vocabulary")
        X = features[[row[w] for w in recording.trials.word]]
        if self.noise > 0:
            rng = np.random.default_rng(self.seed)
            X = X + self.noise * features.std() * rng.standard_normal(X.shape)
        return torch.from_numpy(X.astype(np.float32)).to(device)
