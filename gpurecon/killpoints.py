"""TEST HOOK: kill points so the crash-safety tests can stop a run at a known stage."""

from __future__ import annotations

import logging
import os


def kill_point(stage: str) -> None:
    """TEST HOOK: ``GPURECON_TEST_KILL_AT=<stage>`` SIGKILLs this process at ``stage``
    (generation, high_gamma, solver, writing, publish), so the crash-safety tests can kill a
    run at a known point; ``GPURECON_TEST_KILL_SIGNAL=INT`` sends SIGINT instead (Ctrl-C),
    ``TERM`` SIGTERM.
    Never set them outside tests."""
    if os.environ.get("GPURECON_TEST_KILL_AT") == stage:
        import signal

        if os.environ.get("GPURECON_TEST_KILL_SIGNAL") in ("INT", "TERM"):
            os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["GPURECON_TEST_KILL_SIGNAL"]))
            return
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def kill_after_first(stage: str):
    def hook(done: int, total: int) -> None:
        if done >= 1:
            kill_point(stage)
    return hook

