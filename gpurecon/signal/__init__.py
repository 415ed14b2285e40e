"""Signal stage: high-gamma envelope (FFT-domain filters in torch), frames, context, epochs.

``high_gamma`` turns raw sEEG (channels x samples) into the envelope the field uses;
``frames``/``stack_context`` give the 50 ms / 10 ms feature frames; ``epochs``,
``trial_mean`` and ``epoch_frames`` cut the per-word targets.
"""

from .envelope import detrend, high_gamma
from .filters import FilterBank, design_filters, fft_length, sosfiltfilt_fft, zero_phase_gain
from .framing import epoch_frames, epochs, frame_bounds, frames, stack_context, trial_mean

__all__ = [
    "FilterBank", "design_filters", "detrend", "epoch_frames", "epochs", "fft_length",
    "frame_bounds", "frames", "high_gamma", "sosfiltfilt_fft", "stack_context", "trial_mean",
    "zero_phase_gain",
]
