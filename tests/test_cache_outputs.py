import os

import numpy as np
import pytest

from gpurecon.cache import Cache, file_digest, make_key
from gpurecon.outputs import atomic_path, read_npz, write_csv, write_json, write_npz


def test_key_follows_file_content_and_parameters(tmp_path):
    f = tmp_path / "a.nwb"
    f.write_bytes(b"abc")
    k1 = make_key(nwb=f, l_freq=70.0)
    assert make_key(nwb=f, l_freq=70.0) == k1
    assert make_key(nwb=f, l_freq=71.0) != k1
    f.write_bytes(b"abd")
    os.utime(f, ns=(1, 1))  # new mtime: the memo must not hide the new content
    assert make_key(nwb=f, l_freq=70.0) != k1
    assert file_digest(f) == file_digest(tmp_path / "a.nwb")


def test_cache_round_trip_and_hit(tmp_path):
    cache = Cache(tmp_path / "c")
    calls = []

    def compute():
        calls.append(1)
        return {"y": np.arange(6.0).reshape(2, 3)}, {"device": "cpu"}

    a, prov, hit = cache.get_or_compute("targets", "k", compute)
    b, prov2, hit2 = cache.get_or_compute("targets", "k", compute)
    assert (hit, hit2) == (False, True) and len(calls) == 1
    np.testing.assert_array_equal(a["y"], b["y"])
    assert prov2 == {"device": "cpu"}


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path)
    cache.path("t", "k").parent.mkdir(parents=True)
    cache.path("t", "k").write_bytes(b"not a zip")
    _, _, hit = cache.get_or_compute("t", "k", lambda: ({"x": np.ones(2)}, None))
    assert not hit and read_npz(cache.path("t", "k"))[0]["x"].tolist() == [1.0, 1.0]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writers_round_trip(tmp_path):
    write_npz(tmp_path / "a.npz", provenance={"data": "synthetic"}, x=np.eye(2))
    arrays, prov = read_npz(tmp_path / "a.npz")
    assert prov == {"data": "synthetic"} and np.array_equal(arrays["x"], np.eye(2))
    write_json(tmp_path / "s.json", {"v": np.float32(0.5), "nan": float("nan")})
    assert '"nan": null' in (tmp_path / "s.json").read_text()
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x,y"]], comments=["device: cpu"])
    assert (tmp_path / "t.csv").read_text() == '# device: cpu\na,b\n1,"x,y"\n'


def test_atomic_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "p.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o644
