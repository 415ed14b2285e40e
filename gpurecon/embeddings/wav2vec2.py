"""Wav2Vec 2.0 (XLS-R) embeddings of the audio from each word onset.

The study: ``facebook/wav2vec2-xls-r-300m``, the hidden states of layer 23 for the 2 s of
audio after each word onset (48 kHz decimated to 16 kHz), frames flattened and reduced by a
PCA keeping 90% of the variance. The PCA was fitted on all trials before cross-validation,
which leaks the held-out trial into the features. Here ``pooling="flatten"`` returns the
flattened frames and marks in the metadata that a PCA keeping ``pca_variance`` must be
fitted inside each training fold (the solver's fold-wise preprocessing does it);
``pooling="mean"`` averages over frames instead and needs no PCA.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache import Cache
from .audio import audio_windows
from .base import (Embedder, check_positive_int, hidden_state_stack, layer_indices, parse_dtype,
                   parse_layer, pool_layers, resolve_layer)
from .checkpoints import Checkpoint, load_pretrained, resolve_with_config
from .tiny import build_wav2vec2

log = logging.getLogger(__name__)

POOLINGS = ("flatten", "mean")


class Wav2Vec2Embedder(Embedder):
    """Wav2Vec2 hidden states of a window of audio from each word onset.

    Parameters
    ----------
    checkpoint : str
        Hub name (``facebook/wav2vec2-xls-r-300m``), a local ``save_pretrained`` folder with
        the feature extractor's ``preprocessor_config.json``, or ``tiny`` / ``random-fullsize``.
    revision : str, optional
        Hub revision; None: the default branch.
    layer : str | int
        Hidden-state index 0..n_blocks (0 = input of the first block, k = output of block k;
        negative counts from the end), ``"last"`` (final output), ``"all"`` or a list of
        indices (X is ``(n_layers, n_trials, dim)``; one forward pass; each layer gets its
        own fold-wise PCA in the solver).
    window : float
        Seconds of audio from each onset.
    pooling : str
        ``"flatten"`` (frames x hidden, then fold-wise PCA) or ``"mean"`` over frames.
    pca_variance : float
        Variance fraction the fold-wise PCA keeps (``pooling="flatten"``), in (0, 1].
    batch_size : int
        Windows per forward pass.
    dtype : str
        ``float32``; ``float16`` / ``bfloat16`` on CUDA only. X is float32 either way.
    """

    name = "wav2vec2"

    def __init__(self, checkpoint: str = "facebook/wav2vec2-xls-r-300m", revision: str | None = None,
                 layer: str | int = "23", window: float = 2.0, pooling: str = "flatten",
                 pca_variance: float = 0.9, batch_size: int = 8, dtype: str = "float32"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not np.isfinite(window) or window <= 0:
            raise ValueError(f"window must be a positive number of seconds, got {window!r}")
        if isinstance(pca_variance, bool) or not isinstance(pca_variance, (int, float)) or not 0 < pca_variance <= 1:
            raise ValueError(f"pca_variance must be a fraction in (0, 1], got {pca_variance!r}")
        parse_dtype(dtype)
        self.checkpoint = checkpoint
        self.revision = revision
        self.layer = parse_layer(layer)
        self.window = float(window)
        self.pooling = pooling
        self.pca_variance = float(pca_variance)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.dtype = dtype
        self._resolved: dict = {}

    def _resolve(self, cache: Cache | None) -> tuple[Checkpoint, object]:
        return resolve_with_config(self.checkpoint, self.revision, "wav2vec2", build_wav2vec2, cache,
                                   self._resolved, extra_hint="feature extractor")

    def _describe(self, recording, device, cache):
        ckpt, config = self._resolve(cache)
        parse_dtype(self.dtype, device)
        layer = resolve_layer(self.layer, config.num_hidden_layers, self.checkpoint)
        key = dict(checkpoint_id=ckpt.checkpoint_id, layer=layer, pooling=self.pooling,
                   window=self.window, dtype=self.dtype, batch_size=self.batch_size,
                   audio=np.ascontiguousarray(recording.audio), audio_sfreq=float(recording.audio_sfreq),
                   samples=np.asarray(recording.trials.sample, dtype=np.int64), sfreq=float(recording.sfreq))
        flatten = self.pooling == "flatten"
        meta = dict(checkpoint=self.checkpoint, checkpoint_path=ckpt.location, checkpoint_id=ckpt.checkpoint_id,
                    revision=ckpt.revision,
                    layer=layer, pooling=self.pooling, window=self.window, dtype=self.dtype,
                    untrained=ckpt.untrained, fold_preprocessing="pca" if flatten else None,
                    pca_variance=self.pca_variance if flatten else None,
                    n_blocks=int(config.num_hidden_layers), hidden_size=int(config.hidden_size))
        indices = layer_indices(layer, int(config.num_hidden_layers))
        if indices is not None:   # several layers: X is (n_layers, n_trials, dim)
            meta["n_layers"], meta["layers"] = len(indices), indices
        return key, meta

    def _load(self, device, cache):
        from transformers import AutoFeatureExtractor, Wav2Vec2Model

        ckpt, _ = self._resolve(cache)
        return load_pretrained(ckpt, self.checkpoint, "wav2vec2", AutoFeatureExtractor, Wav2Vec2Model, device,
                               parse_dtype(self.dtype, device))

    def _compute(self, loaded, recording, device, meta):
        extractor, model = loaded
        fs = float(extractor.sampling_rate)
        windows = audio_windows(recording, self.window, to_sfreq=fs)
        meta["model_sfreq"] = fs
        out = []
        batches = range(0, len(windows), self.batch_size)
        for start in tqdm(batches, desc="wav2vec2 windows", unit="batch", leave=False):
            batch = list(windows[start:start + self.batch_size])
            # The checkpoint's own normalisation (zero mean, unit variance per window).
            inputs = extractor(batch, sampling_rate=int(fs), return_tensors="pt")
            values = inputs["input_values"].to(device=device, dtype=model.dtype)
            extra = {"attention_mask": inputs["attention_mask"].to(device)} if "attention_mask" in inputs else {}
            outputs = model(values, output_hidden_states=True, **extra)
            stack = hidden_state_stack(outputs)
            meta["n_frames"] = int(stack[0].shape[-2])
            out.append(pool_layers(stack, meta["layer"], (lambda hidden: hidden.mean(-2))
                                   if self.pooling == "mean" else (lambda hidden: hidden.flatten(-2))))
        return torch.cat(out, dim=-2)
