"""GPT-2 word embeddings: each word alone, no special tokens, hidden states averaged over its tokens.

The study fed every word to the English ``gpt2`` checkpoint on its own and averaged the last
hidden state over the word's BPE tokens. Words are batched with right padding and an
attention mask: GPT-2 attends causally and its positions count from the left, so a real
token never sees the padding and keeps its position; a word's vector is the same alone and
in a batch (to float rounding).
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from ..cache import Cache
from ..errors import DataError
from .base import (Embedder, check_positive_int, hidden_state_stack, layer_indices, parse_dtype,
                   parse_layer, pool_layers, resolve_layer, unique_words)
from .checkpoints import Checkpoint, load_pretrained, resolve_with_config
from .tiny import build_gpt2

log = logging.getLogger(__name__)


class GPT2Embedder(Embedder):
    """GPT-2 (or any transformers model with ``output_hidden_states``) on single words.

    Parameters
    ----------
    checkpoint : str
        Hub name (``gpt2``: the study; ``GroNLP/gpt2-small-dutch``), a local
        ``save_pretrained`` folder, or ``tiny`` / ``random-fullsize`` (offline, untrained).
    revision : str, optional
        Hub revision (branch, tag or commit); None: the default branch.
    layer : str | int
        ``"last"`` (the model's final output), ``"all"`` (every hidden state, embeddings
        output first: X is ``(n_blocks + 1, n_trials, dim)``), an index 0..n_blocks
        (negative counts from the end; 0 = token + position embeddings) or a list of
        indices (X is ``(len(list), n_trials, dim)``, ascending; one forward pass).
    batch_size : int
        Words per forward pass.
    dtype : str
        ``float32``; ``float16`` / ``bfloat16`` on CUDA only. X is float32 either way.
    """

    name = "gpt2"

    def __init__(self, checkpoint: str = "gpt2", revision: str | None = None, layer: str | int = "last",
                 batch_size: int = 64, dtype: str = "float32"):
        super().__init__()
        self.checkpoint = checkpoint
        self.revision = revision
        self.layer = parse_layer(layer)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        parse_dtype(dtype)
        self.dtype = dtype
        self._resolved: dict = {}

    def _resolve(self, cache: Cache | None) -> tuple[Checkpoint, object]:
        return resolve_with_config(self.checkpoint, self.revision, "gpt2", build_gpt2, cache,
                                   self._resolved, extra_hint="tokenizer")

    def _describe(self, recording, device, cache):
        ckpt, config = self._resolve(cache)
        parse_dtype(self.dtype, device)
        layer = resolve_layer(self.layer, config.num_hidden_layers, self.checkpoint)
        key = dict(checkpoint_id=ckpt.checkpoint_id, layer=layer, pooling="token-mean",
                   dtype=self.dtype, batch_size=self.batch_size, words=list(recording.trials.word))
        meta = dict(checkpoint=self.checkpoint, checkpoint_path=ckpt.location, checkpoint_id=ckpt.checkpoint_id,
                    revision=ckpt.revision,
                    layer=layer, pooling="mean over the word's tokens", dtype=self.dtype,
                    untrained=ckpt.untrained, fold_preprocessing=None, pca_variance=None,
                    n_blocks=int(config.num_hidden_layers))
        indices = layer_indices(layer, int(config.num_hidden_layers))
        if indices is not None:   # several layers: X is (n_layers, n_trials, dim)
            meta["n_layers"], meta["layers"] = len(indices), indices
        return key, meta

    def _load(self, device, cache):
        from transformers import AutoModel, AutoTokenizer

        ckpt, _ = self._resolve(cache)
        return load_pretrained(ckpt, self.checkpoint, "gpt2", AutoTokenizer, AutoModel, device,
                               parse_dtype(self.dtype, device))

    def _compute(self, loaded, recording, device, meta):
        tokenizer, model = loaded
        words, index = unique_words(recording.trials.word)
        ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
        max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        for w, tokens in zip(words, ids):
            if not tokens or (max_pos and len(tokens) > max_pos):
                raise DataError(f"{recording.subject}: word {w!r} gives {len(tokens)} tokens with "
                                f"{self.checkpoint}; 1..{max_pos} are usable")
        meta["n_tokens"] = [len(ids[i]) for i in index]
        pooled = self._pool_words(model, ids, meta["layer"], device)
        return pooled[..., torch.as_tensor(index, device=device), :]

    def _pool_words(self, model, ids: list[list[int]], layer, device) -> torch.Tensor:
        """Token-mean hidden states of each word, ``(n_words, H)`` or ``(L, n_words, H)``."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # less padding per batch
        out = None
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc="gpt2 words", unit="batch", leave=False):
            rows = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
                mask[r, :len(ids[i])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            outputs = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            weights = mask.to(torch.float32).unsqueeze(-1)
            pooled = pool_layers(hidden_state_stack(outputs), layer,
                                 lambda hidden: (hidden * weights).sum(-2) / weights.sum(-2))
            if out is None:
                out = torch.empty(pooled.shape[:-2] + (len(ids), pooled.shape[-1]), device=device)
            out[..., torch.as_tensor(rows, device=device), :] = pooled
        return out
