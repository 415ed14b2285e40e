"""Run every benchmark and rewrite benchmarks/RESULTS.md: the machine, the versions, then each
benchmark's Markdown section, all from this one run.

Each benchmark runs in its own process (``python benchmarks/bench_X.py [--quick] --markdown FILE``)
so its memory and threads start clean; a benchmark without ``--markdown`` has its stdout kept
instead. A benchmark that fails is reported in its section (exit status and the end of its
stderr) and the others still run; the exit status is then 1.

    python benchmarks/run_all.py                     # full size (long on a CPU)
    python benchmarks/run_all.py --quick             # every benchmark's --quick
    python benchmarks/run_all.py --only signal pipeline --results /tmp/RESULTS.md
    python benchmarks/run_all.py --args pipeline="--cpu-permutations 50"
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["signal", "solver", "solver_cv", "embeddings", "pipeline", "ranks"]   # RESULTS.md order
VERSIONS = ["torch", "numpy", "scipy", "scikit-learn", "transformers", "lightning"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS, help="a subset, in this order")
    ap.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                    help="extra arguments for one benchmark, e.g. pipeline='--cpu-permutations 50'")
    ap.add_argument("--results", type=Path, default=HERE / "RESULTS.md", help="the file to rewrite")
    args = ap.parse_args(argv)
    extra = {}
    for item in args.args:
        name, sep, rest = item.partition("=")
        if not sep or name not in BENCHMARKS:
            ap.error(f"--args takes NAME=ARGS with NAME one of {', '.join(BENCHMARKS)}, got {item!r}")
        extra[name] = shlex.split(rest)
    args.extra = extra
    return args


# --------------------------------------------------------------------------- the machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    lscpu = shutil.which("lscpu")
    if lscpu:
        out = subprocess.run([lscpu], capture_output=True, text=True).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if found:
            return found.group(1).strip()
    found = re.search(r"model name\s*:\s*(.+)", _read("/proc/cpuinfo"))
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def ram_gib() -> str:
    found = re.search(r"MemTotal:\s*(\d+) kB", _read("/proc/meminfo"))
    return f"{int(found.group(1)) / 2**20:.0f} GiB" if found else "unknown"


def gpus() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "none (no nvidia-smi)"
    out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    rows = [r.strip() for r in out.stdout.splitlines() if r.strip()]
    return "; ".join(rows) if out.returncode == 0 and rows else "none"


def versions() -> str:
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found) + f", Python {platform.python_version()}"


def load() -> str:
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def machine_section(start_load: str, end_load: str) -> str:
    return "\n".join([
        "## Machine", "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; RAM {ram_gib()}",
        f"- GPU: {gpus()}",
        f"- {versions()}",
        f"- Load average (1 / 5 / 15 min): {start_load} at the start, {end_load} at the end; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}. Other jobs on a shared machine slow both columns of a "
        "row alike, not always equally: read the ratios, measured in the same run.", ""])


# --------------------------------------------------------------------------- the benchmarks


def supports(script: Path, flag: str) -> bool:
    """Does ``script --help`` list ``flag``? (each benchmark answers --help without torch)"""
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
    return flag in out.stdout


def run_one(name: str, args, tmp: Path) -> tuple[str, bool]:
    """One benchmark in its own process; its Markdown section, and whether it succeeded."""
    script = HERE / f"bench_{name}.py"
    cmd = [sys.executable, str(script)]
    if args.quick and supports(script, "--quick"):
        cmd.append("--quick")
    cmd += args.extra.get(name, [])
    md = tmp / f"{name}.md"
    markdown = supports(script, "--markdown")
    if markdown:
        cmd += ["--markdown", str(md)]
    shown = " ".join(["python", f"benchmarks/{script.name}", *cmd[2:]]).replace(str(md), "FILE")
    print(f"[run_all] {shown}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # stderr (progress) passes through; stdout (the rows, as each finishes) is echoed to stderr too,
    # so that a run stopped early (a solver_cv section takes hours on 2 cores) keeps what it measured
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            print(f"[{name}] {line}", end="", file=sys.stderr, flush=True)
    stdout = "".join(lines)
    seconds = time.perf_counter() - t0
    title = f"## {name.capitalize()}"
    if proc.returncode != 0:
        body = md.read_text() if markdown and md.exists() else ""
        return (f"{body or title + chr(10)}\n**`{shown}` exited with status {proc.returncode}** after "
                f"{seconds:.0f} s; its output ends with:\n\n```\n{stdout[-2000:]}\n```\n"), False
    if markdown and md.exists():
        body = md.read_text().rstrip("\n")
        if not body.lstrip().startswith("## "):   # every section gets its heading
            body = f"{title}\n\n{body}"
        return body + f"\n\n(`{shown}`: {seconds:.0f} s in all)\n", True
    return (f"{title}\n\n`{shown}` ({seconds:.0f} s in all; this benchmark has no `--markdown` yet, its "
            f"standard output follows)\n\n{stdout.strip()}\n"), True


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(args) -> int:
    start_load = load()
    sections, ok = [], True
    with tempfile.TemporaryDirectory(prefix="gpurecon-run-all-") as tmp:
        for name in [b for b in BENCHMARKS if b in args.only]:
            text, good = run_one(name, args, Path(tmp))
            sections.append(text)
            ok &= good
    head = (f"# Benchmark results\n\nWritten by `python benchmarks/run_all.py{' --quick' if args.quick else ''}"
            f"{' --only ' + ' '.join(args.only) if args.only != BENCHMARKS else ''}"
            f"{''.join(f' --args {k}={shlex.quote(shlex.join(v))}' for k, v in args.extra.items())}` on "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; every number below comes from "
            "this one run.\n")
    text = "\n".join([head, machine_section(start_load, load()), *sections])
    write_atomic(args.results, text.rstrip("\n") + "\n")
    print(f"[run_all] wrote {args.results}" + ("" if ok else " (some benchmarks failed)"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
