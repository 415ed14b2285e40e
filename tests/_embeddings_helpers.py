"""Shared by the tests/test_embeddings_*.py modules: small hand-built recordings, and the
offline tiny models built once per test session and shared by every test's fresh cache."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from gpurecon.cache import Cache
from gpurecon.data.recording import Recording, Trials

_SHARED_MODELS = Path(tempfile.mkdtemp(prefix="gpurecon-test-models-"))
atexit.register(shutil.rmtree, _SHARED_MODELS, True)


def fresh_cache(tmp_path: Path) -> Cache:
    """An empty cache whose ``models/`` folder is the session's shared tiny models."""
    root = Path(tmp_path) / "cache"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "models").exists():
        os.symlink(_SHARED_MODELS, root / "models")
    return Cache(root)


def shared_models() -> Path:
    return _SHARED_MODELS


def make_recording(words, *, sfreq=1024.0, audio_sfreq=48000.0, spacing=3.0, lead=0.5, tail=2.5,
                   seed=0, onset_samples=None, audio=None, source="real", root=None, subject="sub-01"):
    """A Recording with word trials every ``spacing`` s and seeded noise (or given) audio."""
    words = list(words)
    if onset_samples is None:
        onset_samples = np.round((lead + spacing * np.arange(len(words))) * sfreq).astype(np.int64)
    onset_samples = np.asarray(onset_samples, dtype=np.int64)
    duration = (onset_samples.max() / sfreq if len(words) else 0.0) + tail
    n = int(np.ceil(duration * sfreq))
    if audio is None:
        audio = np.random.default_rng(seed).standard_normal(int(np.ceil(duration * audio_sfreq)))
    return Recording(
        subject=subject, seeg=np.zeros((2, n)), sfreq=sfreq, channel_names=["A1", "A2"],
        channel_labels=["Unknown", "Unknown"], coords=np.full((2, 3), np.nan), audio=audio,
        audio_sfreq=audio_sfreq, trials=Trials(onset=onset_samples / sfreq, sample=onset_samples, word=words),
        stimulus=np.array([""] * n), source=source, root=root)
