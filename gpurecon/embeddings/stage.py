"""The embedding stage as the app runs it: the checkpoint checks made before any data is
loaded, and the embeddings of one recording (the model freed afterwards)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..cache import Cache
from ..errors import DataError
from .base import Embeddings


def check_checkpoint(model_cfg: DictConfig) -> None:
    """A checkpoint that is not there (a missing path; offline, a hub name not in the local
    cache) fails before any data is generated or loaded, naming model.checkpoint; so do a
    checkpoint that ships its own code or is of another architecture, and a ``model.layer``
    outside the checkpoint's layers where its config can be read locally."""
    from .checkpoints import (TINY_CHECKPOINTS, check_checkpoint_config, looks_like_path,
                                         resolve_hub)
    from ..errors import ModelError

    spec = model_cfg.get("checkpoint")
    if model_cfg.name == "planted" or not spec:
        return
    revision = model_cfg.get("revision")
    if spec not in TINY_CHECKPOINTS:
        if model_cfg.name == "fasttext" or looks_like_path(spec):
            if not Path(spec).expanduser().exists():
                raise ModelError(f"model.checkpoint={spec!r}: no such file or folder "
                                 f"({Path(spec).expanduser().resolve()})")
        else:
            revision = resolve_hub(spec, revision, model_cfg.name).revision
    check_checkpoint_config(model_cfg.name, spec, revision)
    _check_layer_range(model_cfg, spec, revision)


def _check_layer_range(model_cfg: DictConfig, spec: str, revision: str | None) -> None:
    """``model.layer`` against the checkpoint's block count, read without loading weights."""
    from .base import parse_layer, resolve_layer
    from .checkpoints import n_blocks_without_weights

    layer = model_cfg.get("layer")
    if layer is None:
        return
    n_blocks = n_blocks_without_weights(model_cfg.name, spec, revision)
    if n_blocks is not None:
        if OmegaConf.is_config(layer):
            layer = OmegaConf.to_container(layer)
        resolve_layer(parse_layer(layer), n_blocks, spec)  # ModelError naming model.layer


def compute_embeddings(rec, model_cfg: DictConfig, device: torch.device, cache: Cache) -> Embeddings:
    """The model's one vector per trial, on ``device``; the model is freed afterwards. With
    several layers (``model.layer=all`` or a list) X is ``(layers, trials, dim)`` from one
    forward pass: :func:`split_layers` gives each layer's embeddings."""
    from . import get_embedder

    params = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    name = params.pop("name")
    if name == "planted":
        params.pop("checkpoint", None)  # ground truth: a checkpoint set for a sweep is ignored
    embedder = get_embedder(name, **params)
    try:
        out = embedder.embed(rec, device=device, cache=cache)
    finally:
        embedder.release()  # free the model before the solver starts
    if out.X.ndim == 3 and len(out.meta.get("layers", ())) != out.X.shape[0]:
        raise DataError(f"model.layer={model_cfg.get('layer')!r}: the embeddings have "
                        f"{out.X.shape[0]} layers but name {out.meta.get('layers')!r}")
    return out


# The layer whose scores are a layer-wise run's main scores (summary.json, the score files):
# the study's (GPT-2: the final output; XLS-R: hidden state 23), else the deepest requested.
STUDY_LAYERS = {"gpt2": "last", "wav2vec2": 23}


@dataclass
class LayerEmbeddings:
    """One layer of a layer-wise run: its hidden-state index and its ``(trials, dim)``
    embeddings (``meta["layer"]`` that index, as a single-layer run records it)."""

    layer: int
    emb: Embeddings


def split_layers(emb: Embeddings) -> list[LayerEmbeddings] | None:
    """Each layer of a multi-layer ``emb`` as the embeddings a ``model.layer=k`` run gets;
    None for a single-layer ``emb``."""
    if emb.X.ndim != 3:
        return None
    shared = {k: v for k, v in emb.meta.items() if k not in ("layers", "n_layers")}
    return [LayerEmbeddings(int(k), Embeddings(emb.X[i], {**shared, "layer": int(k)}))
            for i, k in enumerate(emb.meta["layers"])]


def main_layer(model_name: str, layers: list[int], n_blocks: int) -> tuple[int, str]:
    """The layer whose scores are the run's main scores, and why (recorded in summary.json).

    The study's layer (:data:`STUDY_LAYERS`; the final output where the checkpoint has fewer
    blocks, as a tiny model does) when it was fitted, else the deepest fitted layer.
    """
    study = STUDY_LAYERS.get(model_name, "last")
    index = n_blocks if study == "last" or study > n_blocks else int(study)
    what = ("the study's layer" if study == "last" or study <= n_blocks
            else f"the final output (this checkpoint has {n_blocks} blocks, fewer than the "
                 f"study's layer {study})")
    if index in layers:
        return index, f"{what}: hidden state {index} of 0..{n_blocks}"
    return max(layers), (f"the deepest fitted layer ({what}, hidden state {index}, "
                         f"was not requested)")


def n_layers_requested(model_cfg: DictConfig) -> int:
    """How many layers a run fits, known before loading (for the solver's cost check): the
    list's length, the checkpoint's hidden states for ``all`` (1 where they cannot be read
    without loading), else 1."""
    from .base import parse_layer
    from .checkpoints import n_blocks_without_weights

    layer = model_cfg.get("layer")
    if layer is None:
        return 1
    parsed = parse_layer(OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else layer)
    if isinstance(parsed, tuple):
        return len(parsed)
    if parsed == "all":
        n_blocks = n_blocks_without_weights(model_cfg.name, model_cfg.checkpoint,
                                            model_cfg.get("revision"))
        return 1 if n_blocks is None else n_blocks + 1
    return 1
