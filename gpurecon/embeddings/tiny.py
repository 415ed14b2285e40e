"""Deterministic offline models: untrained stand-ins for the real checkpoints.

Without the hub (tests, CI, a first offline run) ``checkpoint: tiny`` builds a small model
from a config with seeded random weights, saves it with the library's own writer
(``save_pretrained`` / gensim's ``save_facebook_model``) into ``<models dir>/<name>/`` and
the embedders then load it through the same ``from_pretrained`` / ``load_facebook_vectors``
code that real checkpoints go through. ``random-fullsize`` does the same at the real
checkpoint's shape (GPT-2 small: 12 x 768; XLS-R 300m: 24 x 1024) for realistic
throughput numbers. Both are UNTRAINED: their embeddings carry no meaning.

Tokenizer and fastText vocabulary are trained on the built-in Dutch word list
(:data:`gpurecon.data.words.WORDS`) only, so one tiny model serves every recording; other
words still embed (byte-level BPE and fastText subwords cover any string).
A build goes to a temporary folder renamed into place, so readers never see half a model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..cache import make_key
from ..data.words import WORDS
from ..outputs import temp_prefix

log = logging.getLogger(__name__)

# Bump when a builder changes what it writes (folder names change with it).
TINY_VERSION = 1
SEED = 0
EOT = "<|endoftext|>"

GPT2_SHAPES = {
    "tiny": dict(n_layer=4, n_embd=32, n_head=4, n_positions=64),
    "random-fullsize": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024),  # gpt2 (small)
}
_CONV = dict(conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))  # 320x: 50 frames/s
WAV2VEC2_SHAPES = {
    # 24 blocks like XLS-R, so the study's layer 23 exists in the tiny model too.
    "tiny": dict(hidden_size=16, num_hidden_layers=24, num_attention_heads=2, intermediate_size=32,
                 conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    "random-fullsize": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                            intermediate_size=4096, conv_dim=(512,) * 7, num_conv_pos_embeddings=128,
                            num_conv_pos_embedding_groups=16),  # facebook/wav2vec2-xls-r-300m
}
# random-fullsize keeps cc.nl.300's 300 dimensions but not its 2M n-gram buckets (2.4 GB).
FASTTEXT_SHAPES = {
    "tiny": dict(vector_size=16, bucket=2000),
    "random-fullsize": dict(vector_size=300, bucket=100_000),
}


def _check_shape(shapes: dict, spec: str) -> dict:
    if spec not in shapes:
        raise ValueError(f"tiny checkpoint must be one of {', '.join(shapes)}, got {spec!r}")
    return shapes[spec]


def _build_once(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_dir)`` unless ``root/name`` exists, then rename the result into place."""
    target = root / name
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # pid-tagged temp name: the cache removes it if this process is killed mid-build
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(name), dir=root))
    try:
        log.info("building the offline UNTRAINED model %s", target)
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a shared cache is not
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same build first
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _seeded_init(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    # Seeded without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return make()


def train_bpe_tokenizer(words=WORDS, vocab_size: int = 1000):
    """A GPT-2 style byte-level BPE tokenizer trained on ``words`` (``tokenizers`` library)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(words), trainer=trainer)
    return tok


def build_gpt2(root: Path, spec: str = "tiny") -> Path:
    """Build (once) and return the folder of an untrained GPT-2 + its BPE tokenizer."""
    shape = _check_shape(GPT2_SHAPES, spec)
    name = f"{spec}-gpt2-v{TINY_VERSION}-{make_key(shape=shape, words=list(WORDS), seed=SEED)[:12]}"

    def build(out: Path) -> None:
        from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

        tok = train_bpe_tokenizer()
        eot = tok.token_to_id(EOT)
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                         unk_token=EOT, model_max_length=shape["n_positions"])
        hf_tok.save_pretrained(out)
        config = GPT2Config(vocab_size=tok.get_vocab_size(), bos_token_id=eot, eos_token_id=eot, **shape)
        _seeded_init(lambda: GPT2Model(config)).save_pretrained(out)

    return _build_once(Path(root), name, build)


def build_wav2vec2(root: Path, spec: str = "tiny") -> Path:
    """Build (once) and return the folder of an untrained Wav2Vec2 + its feature extractor."""
    shape = _check_shape(WAV2VEC2_SHAPES, spec)
    name = f"{spec}-wav2vec2-v{TINY_VERSION}-{make_key(shape=shape, conv=_CONV, seed=SEED)[:12]}"

    def build(out: Path) -> None:
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        # XLS-R's architecture flags: layer-normed conv features, pre-norm ("stable") blocks.
        config = Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                                vocab_size=8, **_CONV, **shape)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                 do_normalize=True, return_attention_mask=True).save_pretrained(out)
        _seeded_init(lambda: Wav2Vec2Model(config)).save_pretrained(out)

    return _build_once(Path(root), name, build)


def build_fasttext(root: Path, spec: str = "tiny") -> Path:
    """Build (once) a fastText model trained on the word list; return its ``.bin`` path."""
    shape = _check_shape(FASTTEXT_SHAPES, spec)
    params = dict(window=3, min_count=1, sg=1, epochs=10, min_n=3, max_n=6, **shape)
    name = f"{spec}-fasttext-v{TINY_VERSION}-{make_key(params=params, words=list(WORDS), seed=SEED)[:12]}"

    def build(out: Path) -> None:
        from gensim.models.fasttext import FastText, save_facebook_model

        rng = np.random.default_rng(SEED)
        corpus = [list(rng.choice(WORDS, size=8)) for _ in range(300)]
        # One worker: gensim's training is deterministic only single-threaded.
        model = FastText(sentences=corpus, seed=SEED, workers=1, **params)
        save_facebook_model(model, str(out / "model.bin"))

    return _build_once(Path(root), name, build) / "model.bin"
