"""The signal stage as the app runs it: high-gamma targets of one recording, cut from each
word onset, cached on the recording's bytes and every setting that changes them."""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from ..cache import Cache, make_key
from ..device import describe_device

log = logging.getLogger("gpurecon")


class Targets(NamedTuple):
    """What the signal stage hands on: ``Y`` (trials, targets) on the run's device and its
    description (the ``target`` block of summary.json)."""

    Y: torch.Tensor
    meta: dict


def target_window(cfg: DictConfig) -> float:
    """Seconds of high gamma after each word onset: the study used 1 s for the text models
    and 2 s for Wav2Vec2 (the span of audio it embeds)."""
    if cfg.target.window is not None:
        return float(cfg.target.window)
    return float(cfg.model.window) if cfg.model.name == "wav2vec2" else 1.0


def build_targets(rec, signal_cfg: DictConfig, target_cfg: DictConfig, window: float,
                  device: torch.device, cache: Cache, progress=None) -> Targets:
    """High gamma of the whole recording, cut from each word onset, on ``device``.

    Returns Y, (trials, targets): ``trial_mean`` gives one column per usable electrode;
    ``frames`` gives electrodes x frames columns (electrode-major). Flat channels are
    excluded. Cached on the NWB file's bytes and every parameter that changes Y.
    """
    from . import epoch_frames, epochs, high_gamma, trial_mean

    # target.kind and signal.dtype are Enums of the schema; ranges were checked at start-up.
    good = rec.good_channels
    params = dict(signal=OmegaConf.to_container(signal_cfg, enum_to_str=True),
                  target=OmegaConf.to_container(target_cfg, enum_to_str=True),
                  window=window, device=device.type, good=good.tolist())
    # [[98, 102]] and [[98.0, 102.0]] are the same band-stops: one cache entry, one filter
    stops = [[float(f) for f in stop] for stop in signal_cfg.stops]
    params["signal"]["stops"] = stops
    key = make_key(nwb=rec.files["nwb"], events=rec.files.get("events"),
                   channels=rec.files.get("channels"), **params)

    def compute():
        t0 = time.perf_counter()
        seeg = torch.from_numpy(rec.seeg).to(device=device, dtype=getattr(torch, signal_cfg.dtype))
        env = high_gamma(seeg, rec.sfreq, l_freq=signal_cfg.l_freq, h_freq=signal_cfg.h_freq,
                         stops=[tuple(s) for s in stops], order=signal_cfg.order,
                         chunk_channels=signal_cfg.chunk_channels, device=device,
                         progress=progress)
        del seeg
        env = env[torch.from_numpy(good).to(device)]
        if target_cfg.kind == "trial_mean":
            Y = trial_mean(epochs(env, rec.trials.sample, rec.sfreq, length=window))
        else:
            Y = epoch_frames(env, rec.trials.sample, rec.sfreq, length=window,
                             window=target_cfg.frame_length, shift=target_cfg.frame_shift)
            Y = Y.reshape(Y.shape[0], -1)
        log.info("high gamma on %s: %d channels x %d samples -> targets %s in %.2f s",
                 describe_device(device), rec.n_channels, rec.seeg.shape[1], tuple(Y.shape),
                 time.perf_counter() - t0)
        return {"Y": Y}, {"subject": rec.subject, "data": rec.source, **params}

    arrays, _, hit = cache.get_or_compute("targets", key, compute)
    Y = torch.as_tensor(arrays["Y"]).to(device)
    if hit:
        log.info("high-gamma targets loaded from the cache (%s/%s)", "targets", key)
    return Targets(Y, {"cache_key": key, "cache_hit": hit, "kind": target_cfg.kind, "window_s": window,
               "n_frames": Y.shape[1] // int(good.sum()), **params})

