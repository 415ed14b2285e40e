"""Where a model's files come from, and the identity that keys its cached embeddings.

A checkpoint is one of
- ``tiny`` / ``random-fullsize``: an untrained model built deterministically offline into
  ``<cache root>/models/`` (see :mod:`.tiny`), then loaded like any local checkpoint;
- a local path (a ``save_pretrained`` folder, or a fastText ``.bin``): identified by the
  names, sizes and digests of its files;
- a Hugging Face hub name (``gpt2``, ``facebook/wav2vec2-xls-r-300m``): identified by the
  commit the revision resolves to (online, or from the local hub cache when offline).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cache import Cache, file_digest
from ..errors import ModelError

log = logging.getLogger(__name__)

TINY_CHECKPOINTS = ("tiny", "random-fullsize")

# Files above this size are fingerprinted by size + their first and last 16 MiB: hashing a
# 7 GB fastText binary on every run would cost more than the cache saves.
_FULL_DIGEST_LIMIT = 256 << 20
_SAMPLE = 16 << 20

_TEMP_MODELS: Path | None = None

# config.json ``model_type`` each model group loads: the embedders build these architectures
# (AutoModel would build whatever model_type says, with fresh weights where the keys differ).
MODEL_TYPES = {"gpt2": ("gpt2",), "wav2vec2": ("wav2vec2",)}

# Weights a checkpoint may carry that the bare model does not use: the heads of the same
# architecture's task models (gpt2: GPT2LMHeadModel; the study's XLS-R is a pre-training
# checkpoint with a quantizer and two projections; CTC fine-tunes add lm_head). Any other
# unexpected key means the weights belong to another model.
HEAD_PREFIXES = {"gpt2": ("lm_head.",),
                 "wav2vec2": ("quantizer.", "project_q.", "project_hid.", "lm_head.")}

# The files through which transformers finds custom code (``auto_map``) in a checkpoint.
_CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json",
                   "processor_config.json", "feature_extractor_config.json")


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint.

    Attributes
    ----------
    spec : str
        The configured value (``gpt2``, ``/data/cc.nl.300.bin``, ``tiny``).
    location : str
        What the loader gets: a local path or a hub repository id.
    revision : str | None
        The hub commit hash for hub checkpoints, else None.
    checkpoint_id : str
        Identity of the weights, used in cache keys.
    untrained : bool
        True for the offline tiny / random models.
    """

    spec: str
    location: str
    revision: str | None
    checkpoint_id: str
    untrained: bool


def models_dir(cache: Cache | None) -> Path:
    """``<cache root>/models``; without a cache root, a temporary folder for this process."""
    global _TEMP_MODELS
    if cache is not None and cache.root is not None:
        return cache.root / "models"
    if _TEMP_MODELS is None:
        _TEMP_MODELS = Path(tempfile.mkdtemp(prefix="gpurecon-models-"))
        atexit.register(shutil.rmtree, _TEMP_MODELS, True)
    return _TEMP_MODELS


def looks_like_path(spec: str) -> bool:
    """A spec that names a file or folder rather than a hub repository (``org/name``).

    An existing path wins, as in ``from_pretrained``; otherwise absolute, home and
    explicitly relative paths and file names are paths, the rest hub names.
    """
    return (Path(spec).expanduser().exists() or spec.startswith(("/", "./", "../", "~"))
            or spec.endswith((".bin", ".vec", ".kv", ".gz")))


def fingerprint(path: str | os.PathLike) -> str:
    """Digest of a file, or of every (non-hidden) file in a folder: names, sizes, contents."""
    path = Path(path).expanduser().resolve()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{size}\0".encode())
        h.update((file_digest(f) if size <= _FULL_DIGEST_LIMIT else _sampled_digest(f, size)).encode())
    return h.hexdigest()


def _sampled_digest(path: Path, size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_SAMPLE))
        f.seek(max(size - _SAMPLE, 0))
        h.update(f.read(_SAMPLE))
    return "sampled:" + h.hexdigest()


def resolve_local(spec: str, what: str) -> Checkpoint:
    """A checkpoint given as a local path; a missing path is a ModelError naming it."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(f"{what} checkpoint {spec!r}: no such file or folder ({path.resolve()})")
    return Checkpoint(spec, str(path.resolve()), None, fingerprint(path), False)


def resolve_tiny(spec: str, build: Callable[[Path, str], Path], cache: Cache | None) -> Checkpoint:
    """Build (once) the offline untrained model ``spec`` and resolve it as a local path."""
    if spec not in TINY_CHECKPOINTS:
        raise ValueError(f"tiny checkpoint must be one of {TINY_CHECKPOINTS}, got {spec!r}")
    path = build(models_dir(cache), spec)
    # Content-keyed like any local checkpoint: a copy of these files is the same checkpoint.
    return Checkpoint(spec, str(path), None, fingerprint(path), True)


def hub_offline() -> bool:
    """True when the hub must not be contacted (``HF_HUB_OFFLINE`` set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_hub(name: str, revision: str | None, what: str, extra_hint: str = "") -> Checkpoint:
    """A hub checkpoint: find the commit ``revision`` resolves to (the local hub cache first,
    then the network unless offline) through its ``config.json``; fail with how to provide it.

    Offline, a checkpoint that is not cached fails at once: no network attempt, no retries.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id=name, filename="config.json", revision=revision)
    except Exception as err:  # an invalid repo id or revision string
        raise ModelError(how_to_provide(name, revision, what, err, extra_hint)) from None
    if not isinstance(cached, str) or not hub_offline():
        if hub_offline():
            raise ModelError(how_to_provide(name, revision, what, None, extra_hint))
        try:
            cached = hf_hub_download(repo_id=name, filename="config.json", revision=revision,
                                     etag_timeout=5)
        except Exception as err:  # no network, unknown repo/revision, invalid name
            raise ModelError(how_to_provide(name, revision, what, err, extra_hint)) from None
    commit = Path(cached).parent.name  # <hub cache>/models--org--name/snapshots/<commit>/
    return Checkpoint(name, name, commit, f"hub:{name}@{commit}", False)


def how_to_provide(name: str, revision: str | None, what: str, err: Exception | None,
                   extra_hint: str = "") -> str:
    rev = f" (revision {revision})" if revision else ""
    rev_arg = f" --revision {revision}" if revision else ""
    if err is None:
        reason = "HF_HUB_OFFLINE is set"
    else:
        first = str(err).splitlines()[0] if str(err) else ""
        reason = f"it could not be fetched ({type(err).__name__}: {first})"
    return (f"model.checkpoint={name!r}{rev}: the {what} checkpoint is not in the local Hugging "
            f"Face cache and {reason}. Provide it: on a connected machine run "
            f"`hf download {name}{rev_arg}` (then copy the hub cache, ~/.cache/huggingface, here), "
            f"or save it with `from_pretrained({name!r}).save_pretrained(DIR)` (model and "
            f"{extra_hint or 'tokenizer'}) and set model.checkpoint=DIR; or use "
            f"model.checkpoint=tiny for the offline untrained tiny model.")


def resolve_pretrained(spec: str, revision: str | None, what: str,
                       build_tiny: Callable[[Path, str], Path], cache: Cache | None,
                       extra_hint: str = "") -> Checkpoint:
    """Resolve a transformers checkpoint spec: tiny, local path, or hub name."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what} checkpoint must be a non-empty string "
                         f"(a hub name, a local path, or one of {TINY_CHECKPOINTS}), got {spec!r}")
    if spec in TINY_CHECKPOINTS:
        return resolve_tiny(spec, build_tiny, cache)
    if looks_like_path(spec):
        return resolve_local(spec, what)
    return resolve_hub(spec, revision, what, extra_hint)


def _checkpoint_file(spec: str, revision: str | None, filename: str) -> Path | None:
    """``filename`` of a local checkpoint folder or of a hub checkpoint in the local hub
    cache (no network); None where it is not there."""
    if looks_like_path(spec):
        path = Path(spec).expanduser() / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id=spec, filename=filename, revision=revision)
    except Exception:  # an invalid repo id: resolving the checkpoint reports it
        return None
    return Path(cached) if isinstance(cached, str) else None


def _read_config(path: Path, spec: str) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ModelError(f"model.checkpoint={spec!r}: {path} is not readable JSON "
                         f"({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"model.checkpoint={spec!r}: {path} holds a JSON "
                         f"{type(obj).__name__}, not an object")
    return obj


def check_checkpoint_config(name: str, spec: str, revision: str | None = None,
                            location: str | None = None) -> None:
    """Refuse a ``gpt2`` / ``wav2vec2`` checkpoint that would run its own code or build
    another architecture, from its JSON files alone (no weights, no network, no code).

    - Custom code: any of :data:`_CODE_MAP_FILES` with an ``auto_map``. gpurecon never runs
      code shipped with a checkpoint (every load passes ``trust_remote_code=False``); failing
      here says so at start-up instead of deep inside transformers.
    - ``model_type`` of config.json must be one of :data:`MODEL_TYPES` for the group: a GPT-2
      folder relabelled ``bert`` would otherwise build a BertModel with random weights.

    Checkpoints whose files are not here (hub names not in the local cache) pass: resolving
    them reports that. ``location``: where the files are, if not at ``spec`` (a resolved
    path). Raises ModelError naming model.checkpoint.
    """
    if name not in MODEL_TYPES or spec in TINY_CHECKPOINTS:
        return
    where = location or spec
    if looks_like_path(where) and Path(where).expanduser().is_file():
        raise ModelError(f"model.checkpoint={spec!r} is a file; a {name} checkpoint is a "
                         f"save_pretrained folder (config.json, weights, "
                         f"{'tokenizer' if name == 'gpt2' else 'preprocessor_config.json'}) "
                         f"or a hub name")
    if looks_like_path(where) and not (Path(where).expanduser() / "config.json").is_file():
        raise ModelError(f"model.checkpoint={spec!r}: the folder has no config.json; a {name} "
                         f"checkpoint is a save_pretrained folder (config.json and weights)")
    for filename in _CODE_MAP_FILES:
        path = _checkpoint_file(where, revision, filename)
        if path is None:
            continue
        config = _read_config(path, spec)
        if "auto_map" in config:
            raise ModelError(
                f"model.checkpoint={spec!r}: {path} declares custom code (auto_map: "
                f"{json.dumps(config['auto_map'])[:200]}); gpurecon never runs code shipped with a "
                f"checkpoint. Use a checkpoint of the standard {name} architecture "
                f"(model_type {' or '.join(MODEL_TYPES[name])}) without auto_map.")
        if filename == "config.json":
            _check_model_type(name, spec, path, config.get("model_type"))


def _check_model_type(name: str, spec: str, path: Path, model_type) -> None:
    allowed = MODEL_TYPES[name]
    if model_type not in allowed:
        raise ModelError(f"model.checkpoint={spec!r}: {path} has model_type {model_type!r}; "
                         f"model={name} loads model_type {', '.join(map(repr, allowed))} only "
                         f"(another architecture would run with weights it does not have)")


def check_loading_info(info: dict, what: str, spec: str, location: str) -> None:
    """Refuse a model whose weights did not all come from the checkpoint.

    ``info`` is ``from_pretrained(..., output_loading_info=True)``'s report. A missing key is a
    weight left at its random initialisation; an unexpected key (other than a head of the same
    architecture, :data:`HEAD_PREFIXES`) is a weight of another model; a mismatched one has
    the wrong shape. Any of them would give scores of a partly random model reported as trained.
    """
    heads = HEAD_PREFIXES.get(what, ())
    problems = []
    for kind, keys in (("missing (left at random initialisation)", info.get("missing_keys")),
                       ("unexpected (not weights of this model)",
                        [k for k in info.get("unexpected_keys") or () if not k.startswith(heads)]),
                       ("of mismatched shape", [k[0] if isinstance(k, tuple) else k
                                                for k in info.get("mismatched_keys") or ()])):
        keys = sorted(keys or ())
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} weight(s) {kind}: {', '.join(keys[:5])}{more}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(map(str, info["error_msgs"]))[:300])
    if problems:
        raise ModelError(f"model.checkpoint={spec!r} ({location}): its weights do not match the "
                         f"{what} model: " + "; ".join(problems) + ". Refusing to run a model "
                         f"that is not the checkpoint's trained weights.")


def resolve_with_config(spec: str, revision: str | None, what: str,
                        build: Callable[[Path, str], Path], cache: Cache | None,
                        memo: dict, extra_hint: str = "") -> tuple[Checkpoint, object]:
    """:func:`resolve_pretrained` plus the checkpoint's transformers config, memoised in
    ``memo`` (per models folder for tiny checkpoints, which live in the cache)."""
    key = str(models_dir(cache)) if spec in TINY_CHECKPOINTS else ""
    if key not in memo:
        from transformers import AutoConfig

        ckpt = resolve_pretrained(spec, revision, what, build, cache, extra_hint=extra_hint)
        check_checkpoint_config(what, spec, ckpt.revision, location=ckpt.location)
        try:
            config = AutoConfig.from_pretrained(ckpt.location, revision=ckpt.revision,
                                                trust_remote_code=False)
        except Exception as err:
            raise ModelError(f"{what} checkpoint {spec!r}: cannot read its config "
                             f"({type(err).__name__}: {err})") from None
        memo[key] = (ckpt, config)
    return memo[key]


def load_pretrained(ckpt: Checkpoint, spec: str, what: str, processor_cls, model_cls,
                    device, dtype) -> tuple[object, object]:
    """Load a checkpoint's processor (tokenizer / feature extractor) and model through
    ``from_pretrained``, the path real checkpoints take; the model in eval mode on ``device``.

    Never runs code shipped with the checkpoint (``trust_remote_code=False``), and fails on
    any weight the checkpoint does not supply (:func:`check_loading_info`)."""
    try:
        processor = processor_cls.from_pretrained(ckpt.location, revision=ckpt.revision,
                                                  trust_remote_code=False)
        model, info = model_cls.from_pretrained(ckpt.location, revision=ckpt.revision,
                                                trust_remote_code=False, output_loading_info=True)
    except Exception as err:
        raise ModelError(f"{what} checkpoint {spec!r} ({ckpt.location}) could not be "
                         f"loaded: {type(err).__name__}: {err}") from None
    check_loading_info(info, what, spec, ckpt.location)
    _check_model_type(what, spec, Path(ckpt.location), getattr(model.config, "model_type", None))
    return processor, model.to(device=device, dtype=dtype).eval()


def n_blocks_without_weights(name: str, spec: str, revision: str | None) -> int | None:
    """Transformer blocks of a ``gpt2`` / ``wav2vec2`` checkpoint, known before anything is
    loaded or built, so that a bad ``model.layer`` fails at start-up.

    Tiny / random checkpoints: the tiny builder's shapes (nothing is built). Local folders
    and cached hub checkpoints: their ``config.json``, local files only (no network, no
    weights). None where the count cannot be read that cheaply; the model stage checks then.
    """
    from . import tiny

    shapes = {"gpt2": (tiny.GPT2_SHAPES, "n_layer"),
              "wav2vec2": (tiny.WAV2VEC2_SHAPES, "num_hidden_layers")}
    if name not in shapes:
        return None
    table, key = shapes[name]
    if spec in TINY_CHECKPOINTS:
        return int(table[spec][key]) if spec in table else None
    try:
        from transformers import AutoConfig

        if looks_like_path(spec):
            config = AutoConfig.from_pretrained(Path(spec).expanduser(), local_files_only=True,
                                                trust_remote_code=False)
        else:
            config = AutoConfig.from_pretrained(spec, revision=revision, local_files_only=True,
                                                trust_remote_code=False)
        return int(config.num_hidden_layers)
    except Exception:  # no readable config.json here: the model stage says what is wrong
        return None
