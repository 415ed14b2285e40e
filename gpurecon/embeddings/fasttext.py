"""FastText word vectors (the study: Dutch Common Crawl ``cc.nl.300.bin``, 300-d).

A word's vector is gensim's ``FastTextKeyedVectors[word]``: in-vocabulary words get their
trained vector, out-of-vocabulary words the mean of their character n-gram vectors.
The 7 GB binary takes minutes to parse, so with ``mmap=True`` (and a cache root) it is
converted once to memory-mappable arrays in ``<cache root>/models/`` and later runs map
those instead (only the rows a lookup touches are read).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..cache import Cache
from ..errors import ModelError
from .base import Embedder, unique_words
from .checkpoints import TINY_CHECKPOINTS, Checkpoint, models_dir, resolve_local, resolve_tiny
from .tiny import build_fasttext

log = logging.getLogger(__name__)

FASTTEXT_MAGIC = 793712314  # first int32 of every fastText .bin (fastText's FILEFORMAT_MAGIC_INT32)
CC_NL_URL = "https://dl.fbaipublicfiles.com/fasttext/vectors-crawl/cc.nl.300.bin.gz"


class FastTextEmbedder(Embedder):
    """fastText vectors of each trial's word, out-of-vocabulary words through subwords.

    Parameters
    ----------
    checkpoint : str
        Path of a fastText ``.bin`` (``cc.nl.300.bin``), or ``tiny`` (offline, untrained:
        trained by gensim on the built-in word list) / ``random-fullsize`` (300-d).
    mmap : bool
        Convert the binary once to a memory-mapped KeyedVectors file in the cache.
    """

    name = "fasttext"

    def __init__(self, checkpoint: str = "cc.nl.300.bin", mmap: bool = True):
        super().__init__()
        if not isinstance(checkpoint, str) or not checkpoint.strip():
            raise ValueError(f"fasttext checkpoint must be a path to a fastText .bin or 'tiny', got {checkpoint!r}")
        if not isinstance(mmap, bool):
            raise ValueError(f"mmap must be true or false, got {mmap!r}")
        self.checkpoint = checkpoint
        self.mmap = mmap

    def _resolve(self, cache: Cache | None) -> Checkpoint:
        if self.checkpoint in TINY_CHECKPOINTS:
            return resolve_tiny(self.checkpoint, build_fasttext, cache)
        if not Path(self.checkpoint).expanduser().is_file():
            raise ModelError(
                f"fasttext checkpoint {self.checkpoint!r}: no such file "
                f"({Path(self.checkpoint).expanduser().resolve()}). Download {CC_NL_URL}, gunzip "
                f"it, and set model.checkpoint=/path/to/cc.nl.300.bin (or $GPURECON_FASTTEXT); "
                f"model.checkpoint=tiny runs the offline untrained tiny model")
        ckpt = resolve_local(self.checkpoint, "fasttext")
        _check_header(Path(ckpt.location))
        return ckpt

    def _describe(self, recording, device, cache):
        ckpt = self._resolve(cache)
        key = dict(checkpoint_id=ckpt.checkpoint_id, words=list(recording.trials.word))
        meta = dict(checkpoint=self.checkpoint, checkpoint_path=ckpt.location, checkpoint_id=ckpt.checkpoint_id,
                    revision=None,
                    layer=None, pooling="word vector (subword n-grams for OOV)", dtype="float32",
                    untrained=ckpt.untrained, fold_preprocessing=None, pca_variance=None)
        return key, meta

    def _load(self, device, cache):
        ckpt = self._resolve(cache)
        if self.mmap and cache is not None and cache.root is not None:
            return _load_mmap(ckpt, models_dir(cache))
        return _load_bin(Path(ckpt.location))

    def _compute(self, kv, recording, device, meta):
        words, index = unique_words(recording.trials.word)
        vectors = np.stack([kv.get_vector(w) for w in words]).astype(np.float32)
        meta["n_oov"] = int(sum(w not in kv.key_to_index for w in words))
        return torch.from_numpy(vectors[index]).to(device)


def _check_header(path: Path) -> None:
    """Refuse a file that is not a complete fastText binary before gensim reads it.

    gensim trusts the header: a corrupt word count or a file cut inside the vocabulary makes
    it loop forever at the end of the file. The header (fastText's args + dictionary sizes)
    gives a lower bound on the file size: vocabulary entries of >= 10 bytes each plus the
    (nwords + bucket) x dim float32 input matrix.
    """
    head_format = "<ii12id3iqq"  # magic, version, 12 int args, t, size, nwords, nlabels, ntokens, pruneidx
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(struct.calcsize(head_format))
    what = f"fasttext checkpoint {str(path)!r}"
    if len(head) < 4 or struct.unpack("<i", head[:4])[0] != FASTTEXT_MAGIC:
        raise ModelError(f"{what} is not a fastText binary (.bin): it does not start with the fastText "
                         f"magic number. A .bin.gz must be gunzipped; a .vec text file has no "
                         f"subwords and cannot be used")
    if len(head) < struct.calcsize(head_format):
        raise ModelError(f"{what} is truncated: {size} bytes, shorter than a fastText header")
    fields = struct.unpack(head_format, head)
    dim, bucket, minn, maxn = fields[2], fields[10], fields[11], fields[12]
    vocab_size, nwords, nlabels = fields[15], fields[16], fields[17]
    sane = (0 < dim <= 100_000 and 0 <= bucket and 0 <= minn <= maxn <= 1000
            and 0 < nwords <= vocab_size and nlabels == 0)
    needed = len(head) + 10 * vocab_size + 16 + (nwords + bucket) * dim * 4
    if not sane or size < needed:
        raise ModelError(f"{what} is corrupt or truncated: its header (dim {dim}, {vocab_size} "
                         f"words, {bucket} buckets, labels {nlabels}) needs at least {needed} bytes, "
                         f"the file has {size}; download it again")


def _load_bin(path: Path):
    from gensim.models.fasttext import load_facebook_vectors

    log.info("fasttext: parsing %s", path)
    try:
        return load_facebook_vectors(str(path))
    except Exception as err:  # truncated / corrupt binaries fail in many ways inside gensim
        raise ModelError(f"fasttext checkpoint {str(path)!r} could not be read as a fastText binary "
                         f"(corrupt or truncated?): {type(err).__name__}: {err}") from None


def _load_mmap(ckpt: Checkpoint, root: Path):
    """``ckpt``'s vectors with memory-mapped arrays, converting the binary once.

    gensim's own ``KeyedVectors.save`` drops the composed word vectors and recomputes them
    word by word on every load (minutes for 2M words), so the conversion stores the arrays
    gensim computed (word vectors, n-gram buckets) as ``.npy`` files plus the vocabulary, and
    loading puts memory maps of them into a ``FastTextKeyedVectors``: lookups (in-vocabulary
    and through subwords) are gensim's own code.
    """
    from gensim.models.fasttext import FastTextKeyedVectors

    folder = root / f"fasttext-mmap-{ckpt.checkpoint_id.replace(':', '-')}"
    if not folder.is_dir():
        kv = _load_bin(Path(ckpt.location))
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        try:
            log.info("fasttext: converting %s to memory-mappable arrays in %s (once)", ckpt.location, folder)
            np.save(tmp / "vectors.npy", np.ascontiguousarray(kv.vectors, dtype=np.float32))
            np.save(tmp / "vectors_ngrams.npy", np.ascontiguousarray(kv.vectors_ngrams, dtype=np.float32))
            (tmp / "params.json").write_text(json.dumps(dict(
                vector_size=int(kv.vector_size), min_n=int(kv.min_n), max_n=int(kv.max_n),
                bucket=int(kv.bucket), words=list(kv.index_to_key)), ensure_ascii=False), encoding="utf-8")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache is not
            try:
                os.rename(tmp, folder)
            except OSError:  # another process converted it first
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        del kv
    try:
        params = json.loads((folder / "params.json").read_text(encoding="utf-8"))
        kv = FastTextKeyedVectors(params["vector_size"], params["min_n"], params["max_n"], params["bucket"])
        # Plain ndarray views of the maps: indexing an np.memmap row by row is ~3x slower.
        kv.vectors = np.load(folder / "vectors.npy", mmap_mode="r").view(np.ndarray)
        kv.vectors_ngrams = np.load(folder / "vectors_ngrams.npy", mmap_mode="r").view(np.ndarray)
        kv.index_to_key = params["words"]
        kv.key_to_index = {w: i for i, w in enumerate(kv.index_to_key)}
        if kv.vectors.shape != (len(kv.index_to_key), kv.vector_size):
            raise ValueError(f"vectors.npy has shape {kv.vectors.shape} for {len(kv.index_to_key)} words")
        return kv
    except Exception as err:
        raise ModelError(f"fasttext: the converted vectors in {folder} are unreadable "
                         f"({type(err).__name__}: {err}); delete that folder to convert again") from None
