"""Loaded by the CLI subprocesses of tests/test_cli_errors.py (PYTHONPATH=tests/_hub_probe):
counts what a failing run reached for, and writes the counts to $GPURECON_TEST_PROBE at exit.

- ``try_to_load_from_cache`` / ``hf_hub_download`` / ``snapshot_download``: hub look-ups;
- ``connect``: socket connections (any network attempt);
- ``modules``: whether the run imported transformers or built a model (work before an error).
"""

import atexit
import json
import os
import socket
import sys

_PATH = os.environ.get("GPURECON_TEST_PROBE")
_COUNTS = {"try_to_load_from_cache": 0, "hf_hub_download": 0, "snapshot_download": 0, "connect": 0}


def _counted(name, fn):
    def wrapper(*args, **kwargs):
        _COUNTS[name] += 1
        return fn(*args, **kwargs)
    return wrapper


if _PATH:
    _connect = socket.socket.connect

    def _count_connect(self, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _COUNTS["connect"] += 1
        return _connect(self, *args, **kwargs)

    socket.socket.connect = _count_connect
    import huggingface_hub

    for _name in ("try_to_load_from_cache", "hf_hub_download", "snapshot_download"):
        setattr(huggingface_hub, _name, _counted(_name, getattr(huggingface_hub, _name)))

    @atexit.register
    def _write():
        out = dict(_COUNTS, transformers="transformers" in sys.modules,
                   modeling="transformers.modeling_utils" in sys.modules)
        with open(_PATH, "w") as f:
            json.dump(out, f)
