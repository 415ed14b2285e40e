"""The shared interface: registry, parameters, caching, model release, planted features, tiny builds."""

import shutil

import numpy as np
import pytest
import torch

from _embeddings_helpers import fresh_cache, make_recording, shared_models
from gpurecon.embeddings import MODEL_NAMES, Embeddings, get_embedder
from gpurecon.embeddings import planted as planted_module
from gpurecon.embeddings.gpt2 import GPT2Embedder
from gpurecon.embeddings.tiny import build_fasttext, build_gpt2
from gpurecon.errors import DataError, ModelError

CPU = torch.device("cpu")
WORDS = ["hond", "kat", "vliegtuigje", "12"]
META_KEYS = {"model", "checkpoint", "checkpoint_id", "revision", "layer", "pooling", "dim", "dtype",
             "untrained", "fold_preprocessing", "pca_variance", "n_trials", "cache_hit"}


def test_unknown_model_lists_the_options():
    with pytest.raises(ModelError) as err:
        get_embedder("bert")
    assert all(name in str(err.value) for name in MODEL_NAMES)


def test_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="poolng.*accepted: checkpoint, revision, layer, window, pooling"):
        get_embedder("wav2vec2", poolng="mean")
    get_embedder("gpt2", name="gpt2", checkpoint="tiny")  # the Hydra group's `name` field is accepted


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded although the embeddings were cached")


def test_second_call_hits_the_cache_without_loading_the_model(tmp_path, monkeypatch):
    cache = fresh_cache(tmp_path)
    rec = make_recording(WORDS)
    first = get_embedder("gpt2", checkpoint="tiny", layer=2).embed(rec, CPU, cache)
    assert first.meta["cache_hit"] is False
    monkeypatch.setattr(GPT2Embedder, "_load", _no_load)
    second = get_embedder("gpt2", checkpoint="tiny", layer=2).embed(rec, CPU, cache)
    assert second.meta["cache_hit"] is True
    assert torch.equal(first.X, second.X)
    assert {k: v for k, v in second.meta.items() if k != "cache_hit"} == \
        {k: v for k, v in first.meta.items() if k != "cache_hit"}
    # "-3" is the same hidden state as 2 for a 4-block model: same entry.
    assert get_embedder("gpt2", checkpoint="tiny", layer=-3).embed(rec, CPU, cache).meta["cache_hit"]


def test_cache_key_follows_layer_words_and_checkpoint(tmp_path, monkeypatch):
    cache = fresh_cache(tmp_path)
    rec = make_recording(WORDS)
    base = get_embedder("gpt2", checkpoint="tiny").embed(rec, CPU, cache)
    assert not get_embedder("gpt2", checkpoint="tiny", layer=1).embed(rec, CPU, cache).meta["cache_hit"]
    other_words = make_recording(WORDS[:-1] + ["13"])
    assert not get_embedder("gpt2", checkpoint="tiny").embed(other_words, CPU, cache).meta["cache_hit"]
    # A local copy of the same files is the same checkpoint (content-keyed) ...
    copy = tmp_path / "my-gpt2"
    shutil.copytree(build_gpt2(shared_models(), "tiny"), copy)
    same = get_embedder("gpt2", checkpoint=str(copy)).embed(rec, CPU, cache)
    assert same.meta["cache_hit"] and torch.equal(same.X, base.X)
    # ... and other weights are another one.
    from transformers import AutoModel
    model = AutoModel.from_pretrained(copy)
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight.mul_(1.5)
    model.save_pretrained(copy)
    changed = get_embedder("gpt2", checkpoint=str(copy)).embed(rec, CPU, cache)
    assert not changed.meta["cache_hit"] and not torch.allclose(changed.X, base.X)


def test_without_cache_nothing_is_stored(tmp_path):
    out = get_embedder("fasttext", checkpoint="tiny").embed(make_recording(WORDS), CPU, None)
    assert out.meta["cache_hit"] is False and out.X.shape == (len(WORDS), out.meta["dim"])


def test_embed_many_loads_once_and_releases(tmp_path, monkeypatch):
    loads = []
    original = GPT2Embedder._load

    def counting_load(self, device, cache):
        loads.append(1)
        return original(self, device, cache)

    monkeypatch.setattr(GPT2Embedder, "_load", counting_load)
    emb = get_embedder("gpt2", checkpoint="tiny")
    recs = [make_recording(WORDS, subject="sub-01"), make_recording(WORDS[::-1], subject="sub-02")]
    outs = emb.embed_many(recs, CPU, fresh_cache(tmp_path))
    assert len(loads) == 1 and emb._loaded is None
    torch.testing.assert_close(outs[0].X, outs[1].X.flip(0))
    emb.embed(recs[0], CPU, None)
    assert len(loads) == 2 and emb._loaded is None  # embed() releases too


@pytest.mark.parametrize("name, params", [
    ("fasttext", dict(checkpoint="tiny")), ("gpt2", dict(checkpoint="tiny", layer="all")),
    ("wav2vec2", dict(checkpoint="tiny", window=0.5))])
def test_every_model_fills_the_metadata_contract(tmp_path, name, params):
    out = get_embedder(name, **params).embed(make_recording(WORDS), CPU, fresh_cache(tmp_path))
    assert isinstance(out, Embeddings)
    assert META_KEYS <= set(out.meta) and out.meta["model"] == name and out.meta["n_trials"] == len(WORDS)
    assert out.meta["untrained"] is True and out.X.dtype == torch.float32
    assert out.X.shape[-2:] == (len(WORDS), out.meta["dim"])


# --- planted --------------------------------------------------------------------------------

def _truth(words, n_features=5, seed=0):
    vocabulary = sorted(set(words))
    features = np.random.default_rng(seed).standard_normal((len(vocabulary), n_features))
    return dict(words=np.array(words), vocabulary=np.array(vocabulary), word_features=features)


def test_planted_returns_the_ground_truth_features(tmp_path, monkeypatch):
    words = ["kat", "hond", "kat", "vis"]
    truth = _truth(words)
    monkeypatch.setattr(planted_module, "load_ground_truth", lambda root, subject: truth)
    rec = make_recording(words, source="synthetic", root=tmp_path)
    out = get_embedder("planted").embed(rec, CPU, fresh_cache(tmp_path))
    rows = [list(truth["vocabulary"]).index(w) for w in words]
    np.testing.assert_array_equal(out.X.numpy(), truth["word_features"][rows].astype(np.float32))
    assert out.meta["fold_preprocessing"] is None and out.meta["untrained"] is False

    noisy = get_embedder("planted", noise=0.5, seed=3).embed(rec, CPU, None).X.numpy().astype(np.float64)
    again = get_embedder("planted", noise=0.5, seed=3).embed(rec, CPU, None).X.numpy().astype(np.float64)
    np.testing.assert_array_equal(noisy, again)  # seeded
    expected = truth["word_features"][rows] + 0.5 * truth["word_features"].std() * \
        np.random.default_rng(3).standard_normal((4, 5))
    np.testing.assert_allclose(noisy, expected, rtol=0, atol=1e-6)


def test_planted_on_real_data_needs_synthetic_data():
    with pytest.raises(ModelError, match="needs synthetic data"):
        get_embedder("planted").embed(make_recording(WORDS), CPU, None)


def test_planted_on_a_written_synthetic_dataset(tmp_path):
    from gpurecon.data import load_ground_truth, load_subject, write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "ds", (1,), n_channels=3, n_words=8, audio_sfreq=16000.0)
    rec = load_subject(root, 1)
    out = get_embedder("planted").embed(rec, CPU, None)
    np.testing.assert_array_equal(out.X.numpy(),
                                  load_ground_truth(root, 1)["trial_features"].astype(np.float32))


# --- the offline models are reproducible ------------------------------------------------------

def test_tiny_builds_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    a, b = build_gpt2(tmp_path / "a"), build_gpt2(tmp_path / "b")
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert build_fasttext(tmp_path / "a").read_bytes() == build_fasttext(tmp_path / "b").read_bytes()
    assert build_gpt2(tmp_path / "a") == a  # built once, then reused


def test_empty_word_is_a_data_error():
    with pytest.raises(DataError, match="trial 0 has an empty word"):
        get_embedder("fasttext", checkpoint="tiny").embed(make_recording([""]), CPU, None)


def test_output_is_a_normal_tensor_the_solver_can_update(tmp_path):
    X = get_embedder("gpt2", checkpoint="tiny").embed(make_recording(WORDS), CPU, None).X
    assert not X.is_inference()
    X -= X.mean(0)  # in place, outside inference mode
    X.requires_grad_(True)
