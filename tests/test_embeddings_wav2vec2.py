"""Wav2Vec2 embeddings against a direct transformers call on the same audio (tiny model)."""

import functools

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from _embeddings_helpers import fresh_cache, make_recording, shared_models
from gpurecon.embeddings import get_embedder
from gpurecon.embeddings.tiny import build_wav2vec2
from gpurecon.errors import ModelError

CPU = torch.device("cpu")
WORDS = ["hond", "kat", "fiets", "huis", "boom"]


@functools.lru_cache(maxsize=1)
def _reference_model():
    folder = build_wav2vec2(shared_models(), "tiny")
    return Wav2Vec2FeatureExtractor.from_pretrained(folder), Wav2Vec2Model.from_pretrained(folder).eval()


def _direct(rec, window, layer):
    """Reference: scipy 48 -> 16 kHz of the whole audio, the feature extractor, the model."""
    fe, model = _reference_model()
    audio16 = resample_poly(rec.audio, 1, 3)
    starts = np.floor(rec.trials.sample * 16000 / rec.sfreq + 0.5).astype(int)
    n = int(round(window * 16000))
    with torch.no_grad():
        inputs = fe([audio16[s:s + n] for s in starts], sampling_rate=16000, return_tensors="pt")
        out = model(**inputs, output_hidden_states=True)
    return out.last_hidden_state if layer == "last" else out.hidden_states[layer]


@pytest.mark.parametrize("layer, pooling", [(23, "flatten"), (23, "mean"), ("last", "mean"), (3, "flatten")])
def test_output_equals_direct_model_call(tmp_path, layer, pooling):
    rec = make_recording(WORDS, seed=1)
    out = get_embedder("wav2vec2", checkpoint="tiny", layer=layer, pooling=pooling, batch_size=2).embed(
        rec, device=CPU, cache=fresh_cache(tmp_path))
    hidden = _direct(rec, 2.0, layer)  # (trials, frames, hidden)
    ref = hidden.mean(1) if pooling == "mean" else hidden.reshape(len(WORDS), -1)
    assert out.X.shape == ref.shape and out.X.dtype == torch.float32
    torch.testing.assert_close(out.X, ref, rtol=0, atol=1e-5)
    assert out.meta["n_frames"] == hidden.shape[1] == 99  # 2 s at 50 frames/s
    if pooling == "flatten":
        assert out.meta["fold_preprocessing"] == "pca" and out.meta["pca_variance"] == 0.9
    else:
        assert out.meta["fold_preprocessing"] is None


def test_the_chosen_layer_is_used(tmp_path):
    rec = make_recording(WORDS[:2], seed=2)
    cache = fresh_cache(tmp_path)
    a = get_embedder("wav2vec2", checkpoint="tiny", layer="22", pooling="mean").embed(rec, CPU, cache).X
    b = get_embedder("wav2vec2", checkpoint="tiny", layer=-3, pooling="mean").embed(rec, CPU, cache).X
    c = get_embedder("wav2vec2", checkpoint="tiny", layer=23, pooling="mean").embed(rec, CPU, cache).X
    torch.testing.assert_close(a, b)  # 25 hidden states: -3 is index 22
    assert not torch.allclose(a, c)
    allx = get_embedder("wav2vec2", checkpoint="tiny", layer="all", pooling="mean").embed(rec, CPU, cache)
    assert allx.X.shape == (25, 2, 16)
    torch.testing.assert_close(allx.X[22], a, rtol=0, atol=1e-6)


def test_batch_size_does_not_change_results(tmp_path):
    rec = make_recording(WORDS, seed=4)
    one = get_embedder("wav2vec2", checkpoint="tiny", batch_size=1).embed(rec, CPU, None).X
    five = get_embedder("wav2vec2", checkpoint="tiny", batch_size=5).embed(rec, CPU, None).X
    torch.testing.assert_close(one, five, rtol=0, atol=1e-5)


def test_layer_out_of_range(tmp_path):
    with pytest.raises(ModelError, match=r"-25\.\.24"):
        get_embedder("wav2vec2", checkpoint="tiny", layer=25).embed(
            make_recording(WORDS[:1]), CPU, fresh_cache(tmp_path))


@pytest.mark.parametrize("params, field", [
    (dict(pooling="max"), "pooling"), (dict(window=-1.0), "window"), (dict(pca_variance=1.5), "pca_variance"),
    (dict(layer="first"), "layer"), (dict(batch_size=0), "batch_size")])
def test_bad_parameters(params, field):
    with pytest.raises(ValueError, match=field):
        get_embedder("wav2vec2", checkpoint="tiny", **params)
