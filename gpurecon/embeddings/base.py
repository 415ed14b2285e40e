"""The one interface every embedding model implements, the registry, and the result cache.

An embedder turns a :class:`~gpurecon.data.recording.Recording` into one row per word trial::

    emb = get_embedder("gpt2", checkpoint="tiny")
    out = emb.embed(recording, device=torch.device("cpu"), cache=Cache("~/.cache/gpurecon"))
    out.X      # (n_trials, dim) float32 on `device`; layer="all" or a list: (n_layers, n_trials, dim)
    out.meta   # checkpoint, layer, pooling, dim, untrained, fold_preprocessing, cache_hit, ...

Models are loaded lazily on a cache miss, run in inference mode and dropped again when
``embed`` returns (``embed_many`` loads once for several recordings), so the solver that
runs next has the device's memory to itself.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..cache import Cache, make_key
from ..device import describe_device
from ..errors import DataError, ModelError

log = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("fasttext", "gpt2", "wav2vec2", "planted")

# Bump when a change in this package changes any embedding value: old cache entries
# then stop matching instead of being served stale.
EMBEDDINGS_VERSION = 1

_CLASSES = {
    "fasttext": ("gpurecon.embeddings.fasttext", "FastTextEmbedder"),
    "gpt2": ("gpurecon.embeddings.gpt2", "GPT2Embedder"),
    "wav2vec2": ("gpurecon.embeddings.wav2vec2", "Wav2Vec2Embedder"),
    "planted": ("gpurecon.embeddings.planted", "PlantedEmbedder"),
}

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Embeddings:
    """What an embedder returns.

    Attributes
    ----------
    X : torch.Tensor
        ``(n_trials, dim)`` float32 on the requested device, rows in trial order;
        ``(n_layers, n_trials, dim)`` for several layers (``meta["layer"]`` ``"all"`` or a
        list; ``meta["layers"]`` the hidden-state index of each row of the first axis).
    meta : dict
        JSON-able description: ``model``, ``checkpoint``, ``checkpoint_id``, ``revision``,
        ``layer``, ``pooling``, ``dim``, ``dtype``, ``untrained``, ``fold_preprocessing``
        (``None`` or ``"pca"``: fit a PCA keeping ``pca_variance`` inside each training
        fold before the solver), ``pca_variance``, ``n_trials``, ``cache_hit``, ``device``.
    """

    X: torch.Tensor
    meta: dict = field(default_factory=dict)


def get_embedder(name: str, /, **params: Any) -> "Embedder":
    """Build the embedder called ``name`` with its config parameters.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    **params
        The fields of the model's config group (see each embedder's docstring). A ``name``
        entry equal to ``name`` (as the Hydra config carries it) is accepted and ignored.
    """
    if name not in _CLASSES:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if "name" in params:
        if params["name"] != name:
            raise ValueError(f"model name {params['name']!r} in the parameters does not match {name!r}")
        params = {k: v for k, v in params.items() if k != "name"}
    module, cls_name = _CLASSES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for model {name!r}; "
                         f"accepted: {', '.join(accepted)}")
    return cls(**params)


class Embedder:
    """Base class: caching, device handling and model release around ``_compute``.

    Subclasses set ``name`` and implement :meth:`_describe` (cheap: resolves the
    checkpoint and layer without loading weights, returns the cache key parts and the
    metadata), :meth:`_load` (loads the model onto the device) and :meth:`_compute`.
    """

    name: str = ""
    cacheable: bool = True

    def __init__(self) -> None:
        self._loaded: Any = None
        self._loaded_on: torch.device | None = None

    # --- subclass hooks -------------------------------------------------------------------
    def _describe(self, recording, device: torch.device, cache: Cache | None) -> tuple[dict, dict]:
        """Return ``(key_parts, meta)`` for this recording; must not load the model."""
        raise NotImplementedError

    def _load(self, device: torch.device, cache: Cache | None) -> Any:
        """Load and return the model (and whatever goes with it) on ``device``."""
        raise NotImplementedError

    def _compute(self, model: Any, recording, device: torch.device, meta: dict) -> torch.Tensor:
        """Embed the recording's trials with a loaded model; may add entries to ``meta``."""
        raise NotImplementedError

    # --- public ---------------------------------------------------------------------------
    def embed(self, recording, device: torch.device | str = "cpu", cache: Cache | None = None) -> Embeddings:
        """Embed every word trial of ``recording`` on ``device``.

        Loads the model only on a cache miss and releases it before returning.
        """
        try:
            return self._embed_one(recording, torch.device(device), cache)
        finally:
            self.release()

    def embed_many(self, recordings: Sequence, device: torch.device | str = "cpu",
                   cache: Cache | None = None) -> list[Embeddings]:
        """Embed several recordings with one model load; the model is released at the end."""
        try:
            return [self._embed_one(rec, torch.device(device), cache) for rec in recordings]
        finally:
            self.release()

    def release(self) -> None:
        """Drop the loaded model and return its memory (``torch.cuda.empty_cache`` on CUDA)."""
        if self._loaded is None:
            return
        on = self._loaded_on
        self._loaded = None
        self._loaded_on = None
        gc.collect()
        if on is not None and on.type == "cuda":
            torch.cuda.empty_cache()
        log.info("%s: model released", self.name)

    # --- internals ------------------------------------------------------------------------
    def _embed_one(self, recording, device: torch.device, cache: Cache | None) -> Embeddings:
        check_trials(recording)
        key_parts, meta = self._describe(recording, device, cache)
        meta = {"model": self.name, **meta, "n_trials": len(recording.trials),
                "device": describe_device(device), "cache_hit": False}
        if meta.get("untrained"):
            log.warning("%s: UNTRAINED %s model %r (%s): its embeddings carry no meaning", self.name,
                        "tiny" if meta.get("checkpoint") == "tiny" else "random-init",
                        meta.get("checkpoint"), meta.get("checkpoint_path"))
        kind = f"embeddings/{self.name}"
        key = None
        if self.cacheable and cache is not None:
            key = make_key(version=EMBEDDINGS_VERSION, model=self.name, device=device.type, **key_parts)
            found = cache.load(kind, key)
            if found is not None and "X" in found[0] and found[1] is not None:
                arrays, prov = found
                log.info("%s: embeddings for %s from the cache (%s)", self.name, recording.subject, key)
                cached_meta = dict(prov.get("meta", {}))
                cached_meta.update(cache_hit=True, device=describe_device(device))
                return Embeddings(torch.from_numpy(arrays["X"]).to(device), cached_meta)
        if self._loaded is None or self._loaded_on != device:
            self.release()
            log.info("%s: loading %s on %s", self.name, meta.get("checkpoint"), describe_device(device))
            self._loaded = self._load(device, cache)
            self._loaded_on = device
        with torch.inference_mode():
            X = self._compute(self._loaded, recording, device, meta)
        # A clone made outside inference mode is a normal tensor: the solver may update it
        # in place or use it under autograd, which inference tensors refuse.
        X = X.to(device=device, dtype=torch.float32).clone(memory_format=torch.contiguous_format)
        meta["dim"] = int(X.shape[-1])
        if key is not None:
            cache.save(kind, key, {"X": X}, {"meta": meta, "key_parts": _jsonable_parts(key_parts)})
        return Embeddings(X, meta)


def check_trials(recording) -> None:
    """Every embedder needs word trials with non-empty words; name the bad trial."""
    trials = recording.trials
    if len(trials) == 0:
        raise DataError(f"{recording.subject}: the recording has no word trials to embed")
    for i, word in enumerate(trials.word):
        if not isinstance(word, str) or not word.strip():
            raise DataError(f"{recording.subject}: trial {i} has an empty word ({word!r}); "
                            "every word trial needs the word shown (events.tsv `value`)")


def unique_words(words: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct words in first-seen order and, per trial, the index of its word."""
    order: dict[str, int] = {}
    index = np.array([order.setdefault(w, len(order)) for w in words], dtype=np.int64)
    return list(order), index


LAYER_VALUES = ("'last', 'all', an integer index (negative counts from the end) or a list of "
                "indices such as [0,6,12]")


def parse_layer(layer: Any, allow_all: bool = True) -> str | int | tuple:
    """``"last"`` | ``"all"`` | an int (also as a string, negative allowed) | a non-empty
    list of ints / ``"last"`` (a tuple: every listed hidden state, fitted in one run)."""
    if isinstance(layer, (list, tuple)) and allow_all:
        if not layer:
            raise ValueError(f"layer must be {LAYER_VALUES}, got an empty list")
        try:
            return tuple(parse_layer(one, allow_all=False) for one in layer)
        except ValueError:
            raise ValueError(f"layer must be {LAYER_VALUES}; each listed layer must be 'last' "
                             f"or an integer index, got {list(layer)!r}") from None
    if isinstance(layer, bool):
        raise ValueError(f"layer must be {LAYER_VALUES}, got {layer!r}")
    if isinstance(layer, (int, np.integer)):
        return int(layer)
    if isinstance(layer, str):
        text = layer.strip().lower()
        if text == "last" or (allow_all and text == "all"):
            return text
        try:
            return int(text)
        except ValueError:
            pass
    allowed = LAYER_VALUES if allow_all else "'last' or an integer index"
    raise ValueError(f"layer must be {allowed}, got {layer!r}")


def resolve_layer(layer: str | int | tuple, n_blocks: int, checkpoint: str) -> str | int | list[int]:
    """Turn a parsed layer into a hidden-state index 0..n_blocks (or ``"all"``; a list of
    indices, ascending, for a parsed list).

    Index 0 is the input of the first transformer block, ``k`` the output of block
    ``k``, ``n_blocks`` the model's final output (``last_hidden_state``, with the final
    layer norm where the model has one). Negative indices count from the end.
    """
    if layer == "all":
        return "all"
    if isinstance(layer, tuple):
        try:
            indices = [resolve_layer(one, n_blocks, checkpoint) for one in layer]
        except ModelError as err:   # name the list as given, then the layer that is wrong
            raise ModelError(f"model.layer={list(layer)!r}: {str(err).removeprefix('model.layer=')}") from None
        if len(set(indices)) != len(indices):
            raise ModelError(f"model.layer={list(layer)!r} names a hidden state twice for "
                             f"{checkpoint} (indices {indices}; -1 and {n_blocks} are the same "
                             f"layer): list each layer once")
        return sorted(indices)
    if layer == "last":
        return n_blocks
    index = int(layer)
    if not -(n_blocks + 1) <= index <= n_blocks:
        raise ModelError(f"model.layer={layer} is out of range for {checkpoint} "
                         f"({n_blocks} blocks): valid layers are {-(n_blocks + 1)}..{n_blocks} "
                         f"(0 = input of the first block, {n_blocks} = final output), "
                         f"'last', 'all' or a list of these indices")
    return index % (n_blocks + 1)


def layer_indices(layer: str | int | list[int], n_blocks: int) -> list[int] | None:
    """The hidden-state indices of a resolved multi-layer request (``"all"`` or a list), in
    the order of X's first axis; None for a single layer."""
    if layer == "all":
        return list(range(n_blocks + 1))
    if isinstance(layer, list):
        return list(layer)
    return None


def hidden_state_stack(outputs) -> list[torch.Tensor]:
    """The hidden states of a transformers output, 0..n_blocks, in one fixed convention.

    transformers 4.x ends ``hidden_states`` with the final (layer-normed) output; 5.x ends it
    with the last block's output before a final layer norm for some models (Wav2Vec2 with
    stable layer norm). Taking ``hidden_states[:-1]`` plus ``last_hidden_state`` gives the
    4.x convention under both.
    """
    return list(outputs.hidden_states[:-1]) + [outputs.last_hidden_state]


def pool_layers(stack: list[torch.Tensor], layer: str | int | list[int], pool) -> torch.Tensor:
    """``pool`` of one hidden state, ``(B, ...)``; of several (``"all"`` or a list),
    stacked ``(L, B, ...)``. Each layer is pooled on its own, by the same operations as a
    single-layer request, so a layer's vectors are the same whichever way it was asked for."""
    indices = layer_indices(layer, len(stack) - 1)
    if indices is None:
        return pool(stack[layer].float())
    return torch.stack([pool(stack[i].float()) for i in indices], dim=0)


def parse_dtype(dtype: str, device: torch.device | None = None) -> torch.dtype:
    """The model's compute dtype; half precision only on CUDA (CPU half kernels are slow/partial)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if device is not None and device.type != "cuda" and dtype != "float32":
        raise ValueError(f"dtype={dtype!r} is for CUDA devices; on {device.type} use dtype=float32")
    return DTYPES[dtype]


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _jsonable_parts(parts: dict) -> dict:
    # Arrays in the key (audio) are summarised, not stored twice.
    return {k: (f"array{tuple(v.shape)}" if isinstance(v, np.ndarray) else
                str(v) if not isinstance(v, (int, float, str, bool, type(None), list)) else v)
            for k, v in parts.items()}
