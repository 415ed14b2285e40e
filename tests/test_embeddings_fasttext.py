"""FastText vectors against gensim's own loader, and unreadable checkpoints."""

import numpy as np
import pytest
import torch
from gensim.models.fasttext import load_facebook_vectors

from _embeddings_helpers import fresh_cache, make_recording, shared_models
from gpurecon.embeddings import get_embedder
from gpurecon.embeddings.tiny import build_fasttext
from gpurecon.errors import ModelError

CPU = torch.device("cpu")
WORDS = ["hond", "zwaluwstaartvlinder", "12", "'s", "kat", "hond"]  # 2nd: out of vocabulary


@pytest.mark.parametrize("mmap", [True, False])
def test_vectors_equal_gensim_including_oov(tmp_path, mmap):
    kv = load_facebook_vectors(str(build_fasttext(shared_models(), "tiny")))
    assert "zwaluwstaartvlinder" not in kv.key_to_index and "hond" in kv.key_to_index
    ref = np.stack([kv[w] for w in WORDS])
    cache = fresh_cache(tmp_path)
    for _ in range(2):  # the second pass reads the converted memory-mapped arrays
        out = get_embedder("fasttext", checkpoint="tiny", mmap=mmap).embed(
            make_recording(WORDS), device=CPU, cache=cache if mmap else None)
        np.testing.assert_array_equal(out.X.numpy(), ref)
        assert out.meta["dim"] == kv.vector_size and out.meta["untrained"] is True
    assert out.meta["n_oov"] == 1


def test_local_path_checkpoint_equals_gensim(tmp_path):
    path = build_fasttext(shared_models(), "tiny")
    copy = tmp_path / "cc.test.bin"
    copy.write_bytes(path.read_bytes())
    out = get_embedder("fasttext", checkpoint=str(copy)).embed(
        make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))
    kv = load_facebook_vectors(str(path))
    np.testing.assert_array_equal(out.X.numpy(), np.stack([kv[w] for w in WORDS]))
    assert out.meta["untrained"] is False


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(ModelError, match=r"no such file.*cc\.nl\.300\.bin\.gz"):
        get_embedder("fasttext", checkpoint=str(tmp_path / "cc.nl.300.bin")).embed(
            make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))


@pytest.mark.parametrize("corruption", ["random", "truncated", "cut_in_vocabulary", "garbage_header", "text"])
def test_corrupt_file_is_one_model_error(tmp_path, corruption):
    good = build_fasttext(shared_models(), "tiny").read_bytes()
    bad = tmp_path / "broken.bin"
    if corruption == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    elif corruption == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif corruption == "cut_in_vocabulary":  # gensim alone would loop forever on this one
        bad.write_bytes(good[:200])
    elif corruption == "garbage_header":  # the right magic number, then noise
        bad.write_bytes(good[:8] + np.random.default_rng(1).bytes(100_000))
    else:
        bad.write_text("2 3\nhond 0.1 0.2 0.3\nkat 0.3 0.2 0.1\n")
    for mmap in (True, False):
        with pytest.raises(ModelError, match="broken.bin"):
            get_embedder("fasttext", checkpoint=str(bad), mmap=mmap).embed(
                make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))


def test_bad_parameters():
    with pytest.raises(ValueError, match="mmap"):
        get_embedder("fasttext", checkpoint="tiny", mmap="yes")
    with pytest.raises(ValueError, match="checkpoint"):
        get_embedder("fasttext", checkpoint="")
