"""Atomic writing of run outputs (temp file in the same folder, then ``os.replace``).

A reader never sees a half-written file, and a run that fails writes nothing partial.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else str(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_npz(path: str | os.PathLike, provenance: dict | None = None, **arrays: Any) -> Path:
    """Write arrays (numpy or torch) to ``.npz``; ``provenance`` is stored as JSON text."""
    buf = io.BytesIO()
    payload = {k: _to_numpy(v) for k, v in arrays.items()}
    if provenance is not None:
        payload["provenance_json"] = np.array(json.dumps(_jsonable(provenance)))
    np.savez(buf, **payload)
    return write_bytes(path, buf.getvalue())


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict | None]:
    """Read what :func:`write_npz` wrote: (arrays, provenance or None)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "provenance_json"}
        prov = json.loads(str(f["provenance_json"])) if "provenance_json" in f.files else None
    return arrays, prov


def write_csv(path: str | os.PathLike, header: list[str], rows: list[list[Any]],
              comments: list[str] | None = None) -> Path:
    """Write a CSV; ``comments`` become leading ``# `` lines (provenance)."""
    out = io.StringIO()
    for line in comments or []:
        out.write(f"# {line}\n")
    out.write(",".join(header) + "\n")
    for row in rows:
        out.write(",".join(_csv_cell(v) for v in row) + "\n")
    return write_text(path, out.getvalue())


def _csv_cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    s = str(v)
    return f'"{s}"' if ("," in s or '"' in s) else s


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)
