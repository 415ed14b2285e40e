"""Tests that pin the app's WIRING (issue 8 section 7): the stage functions are tested against
their references elsewhere; here, what the app passes to them. The study's filter settings end
to end against an independent scipy computation, the study's Wav2Vec2 layer, and cache keys
that follow every setting that changes an array."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import scipy.signal as ss
import torch
import yaml

from _cli_helpers import run_cli
from _embeddings_helpers import fresh_cache, make_recording

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def recording_root(tmp_path_factory):
    from gpurecon.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("wiring") / "ds", subjects=(2,), seed=5,
                                   n_channels=4, n_words=12, audio_sfreq=8000.0)


def _study_high_gamma_trial_means(seeg: np.ndarray, sfreq: float, onsets: np.ndarray) -> np.ndarray:
    """The study's pipeline in scipy alone (float64): detrend, Butterworth order 4 band-pass
    70-170 Hz and band-stops 98-102 / 148-152 Hz (sosfiltfilt), |hilbert| on next_fast_len,
    1 s from each word onset, mean."""
    x = ss.detrend(seeg.astype(np.float64), axis=-1)
    x = ss.sosfiltfilt(ss.iirfilter(4, [70, 170], btype="bandpass", ftype="butter", fs=sfreq,
                                    output="sos"), x, axis=-1)
    for band in ([98, 102], [148, 152]):
        x = ss.sosfiltfilt(ss.iirfilter(4, band, btype="bandstop", ftype="butter", fs=sfreq,
                                        output="sos"), x, axis=-1)
    n = x.shape[-1]
    env = np.abs(ss.hilbert(x, N=scipy.fft.next_fast_len(n), axis=-1)[..., :n])
    length = int(round(1.0 * sfreq))
    return np.stack([env[:, s:s + length].mean(axis=-1) for s in onsets])   # (trials, channels)


def test_app_targets_equal_the_study_pipeline_in_scipy(recording_root, tmp_path):
    from gpurecon.data import load_subject

    proc, out = run_cli([f"data.root={recording_root}", "subject=2", "device=cpu",
                         "signal.dtype=float64"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    Y = np.load(out / "targets.npz")["Y"]
    rec = load_subject(recording_root, 2)
    reference = _study_high_gamma_trial_means(rec.seeg, rec.sfreq, rec.trials.sample)
    assert Y.shape == reference.shape
    # float64 FFT filtering vs scipy's recursions: ~1e-7 at the first trial (end transients),
    # round-off elsewhere. l_freq 75, order 2 or no
    # band-stops each move these means by percent, far above this tolerance.
    np.testing.assert_allclose(Y, reference, rtol=1e-6)


def test_study_filter_settings_are_the_config_defaults():
    from gpurecon.config import SignalConfig

    conf = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    assert "signal" not in conf   # the schema defaults are the study's values
    s = SignalConfig()
    assert (s.l_freq, s.h_freq, s.order) == (70.0, 170.0, 4)
    assert s.stops == [[98.0, 102.0], [148.0, 152.0]]


def test_study_wav2vec2_layer_23_in_config_yaml_and_class():
    from gpurecon.config import Wav2Vec2Config
    from gpurecon.embeddings.wav2vec2 import Wav2Vec2Embedder

    assert str(Wav2Vec2Config().layer) == "23"
    assert str(yaml.safe_load((REPO / "conf" / "model" / "wav2vec2.yaml").read_text())["layer"]) == "23"
    assert str(inspect.signature(Wav2Vec2Embedder.__init__).parameters["layer"].default) == "23"
    assert Wav2Vec2Config().window == 2.0 and str(Wav2Vec2Config().pooling) == "flatten"


# ----------------------------------------------------------------------------- cache keys

def _cfg(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=["device=cpu", *overrides])


TARGET_VARIANTS = [
    ["signal.l_freq=75"], ["signal.h_freq=160"], ["signal.order=2"], ["signal.stops=[]"],
    ["signal.stops=[[98.0,102.0]]"], ["signal.dtype=float64"], ["target.window=0.5"],
    ["target=frames"], ["target=frames", "target.frame_length=0.1"],
    ["target=frames", "target.frame_shift=0.02"],
]


def test_targets_cache_key_follows_every_signal_and_target_setting(recording_root, tmp_path):
    from gpurecon.cache import Cache
    from gpurecon.data import load_subject
    from gpurecon.signal.targets import build_targets, target_window

    rec = load_subject(recording_root, 2)
    cache = Cache(tmp_path / "cache")

    def targets(overrides):
        cfg = _cfg(overrides)
        Y, meta = build_targets(rec, cfg.signal, cfg.target, target_window(cfg), CPU, cache)
        return Y.cpu().numpy(), meta["cache_hit"]

    base, hit = targets([])
    assert not hit and targets([])[1]   # same settings: a hit
    for overrides in TARGET_VARIANTS:
        Y, hit = targets(overrides)
        assert not hit, overrides
        assert Y.dtype != base.dtype or Y.shape != base.shape or not np.allclose(Y, base, rtol=1e-6), \
            overrides
    # chunking changes nothing in the array (beyond round-off): it may share the entry or not,
    # but what it serves must equal the computed array
    Y, _ = targets(["signal.chunk_channels=1"])
    np.testing.assert_allclose(Y, base, rtol=1e-5)


# model -> (base settings, the variants that must each miss the cache and change X)
EMBEDDING_VARIANTS = {
    "gpt2": ([], [["model.layer=1"]]),
    "wav2vec2": (["model.pooling=mean"], [["model.pooling=mean", "model.layer=1"],
                                          ["model.pooling=mean", "model.window=1.0"],
                                          ["model.pooling=flatten"]]),
}


@pytest.mark.parametrize("model", list(EMBEDDING_VARIANTS))
def test_embedding_cache_key_follows_the_model_settings(model, tmp_path):
    from gpurecon.embeddings.stage import compute_embeddings

    cache = fresh_cache(tmp_path)
    rec = make_recording(["huis", "boom", "water", "kat", "hond", "fiets"], audio_sfreq=16000.0)
    base, variants = EMBEDDING_VARIANTS[model]

    def embed(overrides):
        return compute_embeddings(rec, _cfg([f"model={model}", "model.checkpoint=tiny", *overrides]).model,
                                  CPU, cache)

    first, again = embed(base), embed(base)
    assert not first.meta["cache_hit"] and again.meta["cache_hit"]
    for overrides in variants:
        other = embed(overrides)
        assert not other.meta["cache_hit"], overrides
        assert other.X.shape != first.X.shape or not torch.allclose(other.X, first.X), overrides


def test_embedding_cache_key_follows_the_checkpoint(tmp_path):
    """model.checkpoint reaches the key through the app: other weights, another entry."""
    import shutil

    from transformers import AutoModel

    from _embeddings_helpers import shared_models
    from gpurecon.embeddings.tiny import build_gpt2
    from gpurecon.embeddings.stage import compute_embeddings

    cache = fresh_cache(tmp_path)
    rec = make_recording(["huis", "boom", "water", "kat"])
    copy = tmp_path / "my-gpt2"
    shutil.copytree(build_gpt2(shared_models(), "tiny"), copy)
    base = compute_embeddings(rec, _cfg(["model=gpt2", f"model.checkpoint={copy}"]).model, CPU, cache)
    model = AutoModel.from_pretrained(copy)
    with torch.no_grad():
        model.h[0].mlp.c_fc.weight.mul_(1.5)
    model.save_pretrained(copy)
    changed = compute_embeddings(rec, _cfg(["model=gpt2", f"model.checkpoint={copy}"]).model, CPU, cache)
    assert not base.meta["cache_hit"] and not changed.meta["cache_hit"]
    assert not torch.allclose(changed.X, base.X)


def test_solver_strategy_reaches_the_solver_and_the_outputs(monkeypatch):
    """solver.strategy is passed to cross_val_predict and recorded in the fit's metadata."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    import gpurecon.solver as solver
    from gpurecon.config import SolverConfig
    from gpurecon.solver.fit import fit_cross_validated

    seen = []
    real = solver.cross_val_predict

    def spy(*args, **kwargs):
        seen.append(kwargs.get("strategy"))
        return real(*args, **kwargs)

    monkeypatch.setattr(solver, "cross_val_predict", spy)
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((12, 4)))
    Y = X[:, :2] @ torch.ones((2, 3), dtype=torch.float64) + 0.1 * torch.from_numpy(rng.standard_normal((12, 3)))
    cfg = OmegaConf.merge(OmegaConf.structured(SolverConfig),
                          {"strategy": "gpu", "n_permutations": 0, "alpha": 0.1})
    fit = fit_cross_validated(SimpleNamespace(X=X, meta={}), Y, cfg, torch.device("cpu"), seed=0)
    assert seen == ["gpu"] and fit.meta["strategy"] == "gpu"
