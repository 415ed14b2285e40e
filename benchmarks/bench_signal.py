"""Benchmark the high-gamma envelope: scipy (the field's path), MNE, gpurecon on CPU and CUDA.

All paths compute the same thing: linear detrend, 70-170 Hz band-pass and 98-102 / 148-152 Hz
band-stops (Butterworth order 4, zero-phase), |analytic signal|. Times are the best of
``--repeats`` runs, ratios are against scipy measured in the same run, errors are the max
|difference| to scipy divided by the RMS of scipy's envelope: ``interior`` beyond 5 s from
either end, ``all`` over every sample.

    python benchmarks/bench_signal.py                        # 300 s x 127 channels, 1024 Hz
    python benchmarks/bench_signal.py --quick --markdown /tmp/signal.md
    python benchmarks/bench_signal.py --write-results     # also update its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--channels", type=int, default=127)
    ap.add_argument("--sfreq", type=float, default=1024.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--skip-mne", action="store_true")
    ap.add_argument("--quick", action="store_true", help="60 s x 32 channels, best of 1, no MNE")
    ap.add_argument("--markdown", type=Path, default=None, help="write the Markdown section to this file")
    ap.add_argument("--write-results", action="store_true",
                    help="also replace this benchmark's section of --results (benchmarks/run_all.py "
                         "rewrites the whole file)")
    ap.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    ap.add_argument("--note", default="", help="a line added to the results (e.g. machine load)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.channels, args.repeats, args.skip_mne = 60.0, 32, 1, True
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help answers here, before the heavy imports below

import datetime  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.fftpack  # noqa: E402
import scipy.signal  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpurecon.outputs import write_text  # noqa: E402
from gpurecon.signal import high_gamma  # noqa: E402

BANDS = [((70.0, 170.0), "bandpass"), ((98.0, 102.0), "bandstop"), ((148.0, 152.0), "bandstop")]
SECTION = "## Signal"


def realistic_seeg(n_channels: int, n_samples: int, sfreq: float, seed: int) -> np.ndarray:
    """1/f noise, drift, offsets, 50 Hz line noise and harmonics, bursts of high gamma."""
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(n_samples, 1 / sfreq)
    spectrum = (rng.standard_normal((n_channels, freqs.size))
                + 1j * rng.standard_normal((n_channels, freqs.size))) / np.maximum(freqs, 0.5)
    x = np.fft.irfft(spectrum, n_samples) * np.sqrt(n_samples) * 20
    t = np.arange(n_samples) / sfreq
    phase = rng.uniform(0, 2 * np.pi, (n_channels, 1))
    x += 30 * np.sin(2 * np.pi * 50 * t + phase) + 5 * np.sin(2 * np.pi * 100 * t + phase)
    x += 3 * np.sin(2 * np.pi * 150 * t + 2 * phase)
    band = scipy.signal.butter(4, [70, 170], "bandpass", fs=sfreq, output="sos")
    bursts = 1 + 3 * np.maximum(0, np.sin(2 * np.pi * t / 3.0 + phase))
    x += 3 * bursts * scipy.signal.sosfilt(band, rng.standard_normal((n_channels, n_samples)))
    x += 0.5 * t * rng.standard_normal((n_channels, 1)) + 50 * rng.standard_normal((n_channels, 1))
    return x


def scipy_path(x: np.ndarray, sfreq: float) -> np.ndarray:
    """The field's extractHG filtering (time along the last axis here)."""
    x = scipy.signal.detrend(x, axis=-1)
    for edges, btype in BANDS:
        sos = scipy.signal.iirfilter(4, [f / (sfreq / 2) for f in edges], btype=btype, output="sos")
        x = scipy.signal.sosfiltfilt(sos, x, axis=-1)
    n = x.shape[-1]
    return np.abs(scipy.signal.hilbert(x, scipy.fftpack.next_fast_len(n), axis=-1)[..., :n])


def mne_path(x: np.ndarray, sfreq: float) -> np.ndarray:
    """The same with MNE: RawArray.filter (IIR, SOS, zero-phase) and apply_hilbert."""
    import mne
    info = mne.create_info([f"ch{i}" for i in range(x.shape[0])], sfreq, "seeg")
    raw = mne.io.RawArray(scipy.signal.detrend(x, axis=-1), info, verbose=False)
    params = dict(order=4, ftype="butter", output="sos")
    raw.filter(70.0, 170.0, method="iir", iir_params=params, picks="all", verbose=False)
    for lo, hi in (BANDS[1][0], BANDS[2][0]):   # l_freq > h_freq: band-stop
        raw.filter(hi, lo, method="iir", iir_params=params, picks="all", verbose=False)
    raw.apply_hilbert(envelope=True, picks="all", verbose=False)
    return raw.get_data()


def best_time(fn, repeats: int, sync=None):
    best, out = float("inf"), None
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        out = fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def errors(out, ref: np.ndarray, sfreq: float) -> tuple[float, float]:
    out = out.detach().cpu().double().numpy() if isinstance(out, torch.Tensor) else out
    err = np.abs(out - ref) / np.sqrt(np.mean(ref ** 2))
    edge = int(5 * sfreq)
    interior = err[:, edge:-edge].max() if err.shape[-1] > 2 * edge else float("nan")
    return float(interior), float(err.max())


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        pass
    gpu = (f", GPU {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
           if torch.cuda.is_available() else ", no GPU")
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} CPU threads){gpu}, Python {platform.python_version()}")


def main(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)

    n = int(round(args.seconds * args.sfreq))
    x = realistic_seeg(args.channels, n, args.sfreq, args.seed)
    print(f"{args.channels} channels x {args.seconds:g} s at {args.sfreq:g} Hz; {machine()}")
    rows = []   # (path, seconds, error interior, error all)

    t_ref, ref = best_time(lambda: scipy_path(x, args.sfreq), args.repeats)
    rows.append(("scipy (detrend, sosfiltfilt x3, hilbert), float64", t_ref, 0.0, 0.0))
    if not args.skip_mne:
        t, out = best_time(lambda: mne_path(x, args.sfreq), args.repeats)
        rows.append(("MNE (RawArray.filter iir x3, apply_hilbert), float64", t, *errors(out, ref, args.sfreq)))

    for dtype in (torch.float32, torch.float64):
        xt = torch.from_numpy(x).to(dtype)
        high_gamma(xt[:2], args.sfreq)                                   # warm-up
        t, out = best_time(lambda: high_gamma(xt, args.sfreq), args.repeats)
        name = str(dtype).replace("torch.", "")
        rows.append((f"gpurecon CPU {name} ({torch.get_num_threads()} threads)", t,
                     *errors(out, ref, args.sfreq)))

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        sync = torch.cuda.synchronize
        for dtype in (torch.float32, torch.float64):
            name = str(dtype).replace("torch.", "")
            xt = torch.from_numpy(x).to(dtype)
            xg = xt.to(dev)
            high_gamma(xg, args.sfreq)                                   # warm-up (plans, gains)
            t, out = best_time(lambda: high_gamma(xg, args.sfreq), args.repeats, sync)
            rows.append((f"gpurecon CUDA {name}, data on GPU", t, *errors(out, ref, args.sfreq)))
            t, out = best_time(lambda: high_gamma(xt, args.sfreq, device=dev).cpu(), args.repeats, sync)
            rows.append((f"gpurecon CUDA {name}, host -> GPU -> host", t, *errors(out, ref, args.sfreq)))

    lines = ["| path | time (s) | speed-up vs scipy | max err interior / RMS | max err all / RMS |",
             "|---|---|---|---|---|"]
    for name, t, e_in, e_all in rows:
        lines.append(f"| {name} | {t:.3f} | {t_ref / t:.1f}x | {e_in:.1e} | {e_all:.1e} |")
    table = "\n".join(lines)
    body = section(args, table)
    print(body)
    if args.markdown:
        write_text(args.markdown, body)
    if args.write_results:
        write_section(args.results, body)
        print(f"wrote the {SECTION!r} section of {args.results}")
    return 0


def section(args, table: str) -> str:
    """This benchmark's Markdown section: command, machine, what is compared, the table."""
    return (f"{SECTION}\n\n`python benchmarks/bench_signal.py --seconds {args.seconds:g} "
            f"--channels {args.channels} --repeats {args.repeats}{' --skip-mne' if args.skip_mne else ''}` "
            f"({datetime.date.today().isoformat()})\n\n"
            f"Machine: {machine()}.\n"
            + (f"{args.note}\n" if args.note else "")
            + f"\n{args.channels} channels x {args.seconds:g} s at {args.sfreq:g} Hz, realistic random "
            f"sEEG (seed {args.seed}); best of {args.repeats}; errors are max |difference to scipy| / "
            f"RMS of scipy's envelope (interior: beyond 5 s from the ends). gpurecon reproduces "
            f"sosfiltfilt's end transients and the Hilbert of the truncated signal, so it matches "
            f"at every sample; MNE pads the ends differently (its own padlen) and the Hilbert "
            f"transform spreads that end difference as a slowly decaying ~1/t tail.\n\n{table}\n")


def write_section(path: Path, body: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving the others alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    write_text(path, text.rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main(ARGS))
