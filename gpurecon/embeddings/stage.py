"""The embedding stage as the app runs it: the checkpoint checks made before any data is
loaded, and the embeddings of one recording (the model freed afterwards)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..cache import Cache
from ..errors import DataError


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
        resolve_layer(parse_layer(layer), n_blocks, spec)  # ModelError naming model.layer


def compute_embeddings(rec, model_cfg: DictConfig, device: torch.device, cache: Cache):
    """The model's one vector per trial, on ``device``; the model is freed afterwards."""
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
    if out.X.ndim != 2:
        raise DataError(f"model.layer={model_cfg.get('layer')!r} gives one embedding per layer; "
                        "the app fits one layer per run: choose a single layer index")
    return out

