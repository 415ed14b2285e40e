"""Layer-wise encoding: one ``model.layer=all`` run vs one ``model.layer=k`` run per layer.

Both sides are the app's own runs (``gpurecon.experiment.run``, in this process after one
untimed warm-up run, so Python, torch and transformers start-up are not counted for either): ``all`` loads the data, builds the targets, runs
the model's forward pass once and fits every layer; the separate runs share one cache (as a
sweep does: the targets are built once and loaded by the others) but each runs its own forward
pass and fit. Both read the same synthetic participant, generated once beforehand (not timed).
The scores of every layer must agree between the two (largest difference printed and checked).

    python benchmarks/bench_layers.py --quick                    # tiny GPT-2, 3 channels, 16 words
    python benchmarks/bench_layers.py                            # GPT-2 random-fullsize: 13 layers
    python benchmarks/bench_layers.py --model wav2vec2 --checkpoint random-fullsize --device cuda
    python benchmarks/bench_layers.py --model wav2vec2 --layers '[0,8,16,24]' --permutations 10
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, 3 channels, 16 words, 5 permutations")
    ap.add_argument("--model", choices=["gpt2", "wav2vec2"], default="gpt2")
    ap.add_argument("--checkpoint", default=None, help="default random-fullsize (tiny with --quick)")
    ap.add_argument("--channels", type=int, default=None, help="default 127 (3 with --quick)")
    ap.add_argument("--words", type=int, default=None, help="trials; default 100 (16 with --quick)")
    ap.add_argument("--permutations", type=int, default=None, help="default 100 (5 with --quick)")
    ap.add_argument("--layers", default="all",
                    help="model.layer of the one run: all (default) or a list such as '[0,8,16,24]'")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    ap.add_argument("--tolerance", type=float, default=1e-6,
                    help="largest allowed |difference| of a layer's scores between the two ways")
    ap.add_argument("--markdown", default=None, help="also write the Markdown section to this file")
    args = ap.parse_args(argv)
    q = args.quick
    args.checkpoint = args.checkpoint or ("tiny" if q else "random-fullsize")
    args.channels = args.channels or (3 if q else 127)
    args.words = args.words or (16 if q else 100)
    args.permutations = args.permutations if args.permutations is not None else (5 if q else 100)
    return args


if __name__ == "__main__":
    ARGS = parse_args()  # --help answers here, before the heavy imports below

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


os.environ.setdefault("TQDM_DISABLE", "1")   # the embedders' per-batch bars


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _timed_run(overrides: list[str], folder: Path) -> tuple[float, dict]:
    from gpurecon import experiment

    cfg = _compose(overrides)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    experiment.run(cfg, folder)
    seconds = time.perf_counter() - t
    return seconds, json.loads((folder / "summary.json").read_text())


def _layer_rows(folder: Path) -> dict[int, dict[str, str]]:
    import csv
    import io

    lines = [ln for ln in (folder / "layers.csv").read_text().splitlines() if not ln.startswith("#")]
    return {int(r["layer"]): r for r in csv.DictReader(io.StringIO("\n".join(lines)))}


def main(args: argparse.Namespace) -> int:
    from gpurecon.data.synthetic import write_synthetic_dataset

    logging.getLogger("gpurecon").setLevel(logging.ERROR)   # the untrained/synthetic warnings, once per run
    with tempfile.TemporaryDirectory(prefix="bench_layers_") as tmp:
        tmp = Path(tmp)
        write_synthetic_dataset(tmp / "data", subjects=[1], n_channels=args.channels, n_words=args.words)
        common = [f"device={args.device}", "data=ibids", f"data.root={tmp / 'data'}", "progress=false",
                  f"model={args.model}", f"model.checkpoint={args.checkpoint}",
                  f"solver.n_permutations={args.permutations}", "solver.max_problems=null"]
        if args.model == "wav2vec2":
            common.append("model.pooling=flatten")
        # untimed: the first run in a process pays the imports (transformers, the solver)
        _timed_run([*common, "model.layer=0", f"cache_dir={tmp / 'cache_warm'}"], tmp / "warm-up")
        t_all, s_all = _timed_run([*common, f"model.layer={args.layers}", f"cache_dir={tmp / 'cache_all'}"],
                                  tmp / "all")
        layers = s_all["layers"]["layers"]
        rows = _layer_rows(tmp / "all")
        t_each, worst = {}, 0.0
        for k in layers:
            t_each[k], s_k = _timed_run([*common, f"model.layer={k}", f"cache_dir={tmp / 'cache_sep'}"],
                                        tmp / f"layer{k}")
            for key, value in s_k["scores"].items():
                if isinstance(value, float):
                    worst = max(worst, abs(float(rows[k][key]) - value))
    t_sep = sum(t_each.values())
    lines = [
        f"## Layer-wise runs: {args.model} {args.checkpoint}, {len(layers)} layers",
        "",
        f"{args.channels} channels, {args.words} trials, {args.permutations} permutations, "
        f"device {args.device}; in-process runs after an untimed warm-up run.",
        "",
        "| way | seconds | embeddings s | solver s |",
        "|---|---|---|---|",
        f"| model.layer={args.layers} (one run) | {t_all:.2f} | {s_all['timings'].get('embeddings_s', 0):.2f} | "
        f"{s_all['timings'].get('solver_s', 0):.2f} |",
        f"| model.layer=k, {len(layers)} runs | {t_sep:.2f} | | |",
        "",
        f"one run / separate runs: {t_all / t_sep:.2f} (separate runs: "
        + ", ".join(f"{k}: {t:.2f} s" for k, t in t_each.items()) + ")",
        f"largest |difference| of a layer's scores between the two ways: {worst:.3g} "
        f"(tolerance {args.tolerance:g})",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if worst > args.tolerance:
        print(f"FAILED: the layer-wise scores differ from the separate runs by {worst:.3g}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
