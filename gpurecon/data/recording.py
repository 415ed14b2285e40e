"""The in-memory form of one participant's recording (what ``load_subject`` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Trials:
    """The word trials of events.tsv (``trial_type == 'word'``), in onset order."""

    onset: np.ndarray        # (n_trials,) float seconds
    sample: np.ndarray       # (n_trials,) int64, sEEG sample index of the onset
    word: list[str]          # (n_trials,) the word shown

    def __len__(self) -> int:
        return len(self.word)


@dataclass
class Recording:
    """One participant of SingleWordProductionDutch-iBIDS (or its synthetic twin).

    Arrays are numpy on the host; each stage moves what it needs to its device.
    """

    subject: str                     # "sub-03"
    seeg: np.ndarray                 # (n_channels, n_samples) float64
    sfreq: float                     # sEEG sampling rate (Hz)
    channel_names: list[str]         # channels.tsv `name`, row i == NWB column i
    channel_labels: list[str]        # channels.tsv `description` (anatomical label)
    coords: np.ndarray               # (n_channels, 3) ACPC mm; NaN where electrodes.tsv lacks the contact
    audio: np.ndarray                # (n_audio_samples,) float64
    audio_sfreq: float               # Hz (48000 in the real data)
    trials: Trials
    stimulus: np.ndarray             # (n_samples,) str: the word on screen, "" otherwise
    source: str = "real"             # "real" | "synthetic"
    root: Path | None = None         # dataset root the files came from
    files: dict[str, Path] = field(default_factory=dict)   # role -> path (nwb, channels, events, ...)
    # Excluded from the targets, in channel order: channels.tsv status `bad`, and flat channels.
    bad_channels: list[str] = field(default_factory=list)
    bad_reasons: dict[str, str] = field(default_factory=dict)  # name -> why it is excluded
    line_freq: float = 50.0          # ieeg.json PowerLineFrequency

    @property
    def n_channels(self) -> int:
        return self.seeg.shape[0]

    @property
    def good_channels(self) -> np.ndarray:
        """Boolean mask (n_channels,) of channels usable as targets."""
        bad = set(self.bad_channels)
        return np.array([name not in bad for name in self.channel_names], dtype=bool)
