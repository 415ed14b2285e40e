"""The app's heap setting (gpurecon.allocator): freed large blocks are reused instead of being
faulted in afresh, ``$GPURECON_MALLOC=0`` opts out, a bad value is one error before anything is
made. Each probe runs in its own process: the setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from _cli_helpers import SMALL, run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap: Linux only")

# ten rounds of a 40 MB and a 20 MB tensor, filled and freed (the solver's temporaries at the
# study's size are of this order); prints the fewest minor page faults of one of the last four rounds (glibc takes a few rounds
# to grow its heap)
_PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from gpurecon.allocator import keep_freed_memory
    print(keep_freed_memory(), file=sys.stderr)
    faults = []
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.empty(5 * 2**20, dtype=torch.float64).fill_(1.0)
        b = torch.empty(5 * 2**20, dtype=torch.float32).fill_(2.0)
        del a, b
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults[6:]))
""")


def _faults(env_value: str | None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPURECON_MALLOC")}
    if env_value is not None:
        env["GPURECON_MALLOC"] = env_value
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    return int(proc.stdout.strip()), proc.stderr.strip()


def test_freed_large_blocks_are_reused_instead_of_faulted_in_again():
    kept, said = _faults(None)
    default, said_off = _faults("0")
    # glibc's default maps the blocks afresh: 5,000-10,000 page faults in every round;
    # kept, a warm heap serves both blocks without any
    assert default > 4_000, default
    assert kept < 500, (kept, default)
    assert said.startswith("memory: freed blocks stay in the heap") and "$GPURECON_MALLOC=0" in said
    assert said_off == "memory: glibc's default heap ($GPURECON_MALLOC=0)"


def test_a_bad_malloc_variable_stops_the_cli_before_anything_is_made(tmp_path):
    proc, out = run_cli(SMALL, tmp_path, env_extra={"GPURECON_MALLOC": "yes"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "gpurecon: error: $GPURECON_MALLOC must be 0 (glibc's default heap) or 1 (keep freed memory), got 'yes'"]
    assert not out.exists() and not (tmp_path / "cache").exists()
