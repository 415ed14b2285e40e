"""Throughput of the embedders: words/s (fastText, GPT-2) and audio-seconds/s (Wav2Vec2).

Each row times the embedder's compute (model already loaded, no cache) against a reference
measured in the same run on the same loaded model:
- fastText: a plain loop of gensim ``load_facebook_vectors(...)[word]``;
- GPT-2: one transformers call per word (the study's way), vs our padded batches;
- Wav2Vec2: one transformers call per 2 s window (feature extractor + model), vs our batches.

Models: the offline ``tiny`` models, the ``random-fullsize`` ones (untrained, random weights
at the real shape: GPT-2 small 12 x 768, XLS-R 300m 24 x 1024: realistic throughput, no
meaning), and real checkpoints where given (flags or $GPURECON_BENCH_FASTTEXT /
$GPURECON_BENCH_GPT2 / $GPURECON_BENCH_WAV2VEC2: a local path or a cached hub name).

    python benchmarks/bench_embeddings.py [--devices cpu cuda] [--quick] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu (+ cuda if present)")
    parser.add_argument("--cache", default=None, help="cache root for built models (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--fasttext", default=os.environ.get("GPURECON_BENCH_FASTTEXT"))
    parser.add_argument("--gpt2", default=os.environ.get("GPURECON_BENCH_GPT2"))
    parser.add_argument("--wav2vec2", default=os.environ.get("GPURECON_BENCH_WAV2VEC2"))
    parser.add_argument("--markdown", default=None, help="write the Markdown section to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = parse_args()  # --help answers here, before the heavy imports below

import atexit  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpurecon.cache import Cache  # noqa: E402
from gpurecon.data.recording import Recording, Trials  # noqa: E402
from gpurecon.data.words import WORDS  # noqa: E402
from gpurecon.embeddings import get_embedder  # noqa: E402
from gpurecon.embeddings.audio import audio_windows  # noqa: E402
from gpurecon.embeddings.base import hidden_state_stack  # noqa: E402
from gpurecon.outputs import write_text  # noqa: E402


def recording(words, audio_seconds_per_trial=3.0, seed=0) -> Recording:
    sfreq, audio_sfreq = 1024.0, 48000.0
    onsets = 0.5 + audio_seconds_per_trial * np.arange(len(words))
    samples = np.round(onsets * sfreq).astype(np.int64)
    duration = onsets[-1] + 2.5
    audio = np.random.default_rng(seed).standard_normal(int(duration * audio_sfreq))
    return Recording("sub-bench", np.zeros((1, 1)), sfreq, ["A1"], ["Unknown"], np.zeros((1, 3)), audio,
                     audio_sfreq, Trials(onsets, samples, list(words)), np.array([""]), source="real")


def bench_words(n_unique: int) -> list[str]:
    # Unique words (repeats are embedded once): the word list, then derived forms.
    suffixes = ["", "je", "en", "tje", "s", "ig", "heid", "lijk"]
    return [w + s for s in suffixes for w in WORDS][:n_unique]


def timed(fn, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(emb, rec, device, cache):
    """Load once (not timed), then time the compute of the embedder itself."""
    _, meta = emb._describe(rec, device, cache)
    meta = {"model": emb.name, **meta}
    loaded = emb._load(device, cache)

    def run():
        with torch.inference_mode():
            X = emb._compute(loaded, rec, device, dict(meta))
        sync(device)
        return X

    run()  # warm-up
    return loaded, meta, timed(run, repeats=2)


def row(model, checkpoint, device, unit, amount, t_ours, t_ref, ref_name):
    return (f"| {model} | {checkpoint} | {device} | {amount / t_ours:,.0f} {unit}/s | "
            f"{amount / t_ref:,.0f} {unit}/s | {t_ref / t_ours:.1f}x | {ref_name} |")


def bench_fasttext(checkpoint, device, cache, n_words):
    from gensim.models.fasttext import load_facebook_vectors

    words = bench_words(n_words)
    rec = recording(words)
    emb = get_embedder("fasttext", checkpoint=checkpoint)
    kv, meta, (t_ours, X) = ours(emb, rec, device, cache)
    ref_kv = load_facebook_vectors(meta["checkpoint_path"])
    t_ref, ref = timed(lambda: torch.from_numpy(np.stack([ref_kv[w] for w in words])).to(device), 2)
    assert torch.equal(X, ref)
    return row("fasttext", _label(checkpoint, meta), device, "words", len(words), t_ours, t_ref,
               "gensim kv[word] loop")


def bench_gpt2(checkpoint, device, cache, n_words, batch_size=64):
    words = bench_words(n_words)
    rec = recording(words)
    emb = get_embedder("gpt2", checkpoint=checkpoint, batch_size=batch_size)
    (tok, model), meta, (t_ours, X) = ours(emb, rec, device, cache)

    def per_word():
        rows = []
        with torch.inference_mode():
            for w in words:
                ids = torch.tensor([tok(w, add_special_tokens=False)["input_ids"]], device=device)
                rows.append(model(input_ids=ids).last_hidden_state[0].mean(0))
        sync(device)
        return torch.stack(rows)

    t_ref, ref = timed(per_word, 1)
    err = float((X - ref.float()).abs().max())
    return row("gpt2", _label(checkpoint, meta), device, "words", len(words), t_ours, t_ref,
               f"1 call per word (max abs diff {err:.1e})")


def bench_wav2vec2(checkpoint, device, cache, n_trials, batch_size=8):
    rec = recording(["w%d" % i for i in range(n_trials)])
    emb = get_embedder("wav2vec2", checkpoint=checkpoint, batch_size=batch_size, pooling="mean")
    (fe, model), meta, (t_ours, X) = ours(emb, rec, device, cache)
    windows = audio_windows(rec, 2.0, to_sfreq=16000)

    def per_window():
        rows = []
        with torch.inference_mode():
            for w in windows:
                inputs = fe([w], sampling_rate=16000, return_tensors="pt").to(device)
                out = model(**inputs, output_hidden_states=True)
                rows.append(hidden_state_stack(out)[meta["layer"]][0].mean(0))
        sync(device)
        return torch.stack(rows)

    t_ref, ref = timed(per_window, 1)
    err = float((X - ref.float()).abs().max())
    return row("wav2vec2", _label(checkpoint, meta), device, "audio-s", 2.0 * n_trials, t_ours, t_ref,
               f"1 call per window (max abs diff {err:.1e})")


def _label(checkpoint, meta):
    if checkpoint == "random-fullsize":
        return "random-fullsize (UNTRAINED, real shape)"
    return f"{checkpoint} (UNTRAINED)" if meta.get("untrained") else str(checkpoint)


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING)
    cache = Cache(args.cache or tempfile.mkdtemp(prefix="gpurecon-bench-"))
    if args.cache is None:  # the full-size random models take 1.5 GB
        atexit.register(shutil.rmtree, cache.root, True)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cache {cache.root}", file=sys.stderr)
    lines = ["## Embeddings", "",
             f"`python benchmarks/bench_embeddings.py{' --quick' if args.quick else ''} --devices {' '.join(devices)}`"
             f" (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)", "",
             "Time of the embedder's compute with the model loaded (best of 2 after a warm-up) against a reference "
             "on the same loaded model: gensim's `kv[word]` loop (fastText), one transformers call per word "
             "(GPT-2) or per 2 s window (Wav2Vec2). `tiny` and `random-fullsize` are UNTRAINED offline models "
             "(realistic cost, no meaning).", "",
             "| model | checkpoint | device | ours | reference | speed-up | reference is |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in devices:
        device = torch.device(name)
        big = device.type == "cuda"
        jobs = [(bench_fasttext, "tiny", 300), (bench_gpt2, "tiny", 300), (bench_wav2vec2, "tiny", 40)]
        if not args.quick:
            jobs += [(bench_gpt2, "random-fullsize", 300 if big else 100),
                     (bench_wav2vec2, "random-fullsize", 100 if big else 8)]
        for fn, ckpt in ((bench_fasttext, args.fasttext), (bench_gpt2, args.gpt2), (bench_wav2vec2, args.wav2vec2)):
            if ckpt:
                jobs.append((fn, ckpt, 300 if fn is not bench_wav2vec2 else (100 if big else 8)))
        for fn, ckpt, size in jobs:
            lines.append(fn(ckpt, device, cache, size))
            print(lines[-1], flush=True)
    if args.markdown:
        write_text(Path(args.markdown), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
