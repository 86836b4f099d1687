import os
import pickle

import numpy as np
import pytest
import torch

from unseen.io import (
    DataFormatError,
    UnsafeFileError,
    atomic_write_text,
    load_safetensors,
    load_torch,
    safe_pickle_load,
    save_safetensors,
)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/unseen_pwned_marker",))


def test_restricted_unpickler_rebuilds_numpy(tmp_path):
    obj = [np.arange(6, dtype=np.float32).reshape(2, 3), {"a": np.float64(1.5)}, ("x", 3)]
    p = tmp_path / "ok.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    out = safe_pickle_load(p)
    np.testing.assert_array_equal(out[0], obj[0])
    assert out[1]["a"] == 1.5 and out[2] == ("x", 3)
    p.write_bytes(pickle.dumps(obj, protocol=5))
    np.testing.assert_array_equal(safe_pickle_load(p)[0], obj[0])


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = "/tmp/unseen_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UnsafeFileError, match=r"evil.pkl.*(posix|os)\.system"):
        safe_pickle_load(p)
    assert not os.path.exists(marker)


def test_unpickler_errors_name_the_file(tmp_path):
    with pytest.raises(DataFormatError, match="missing.pkl: file not found"):
        safe_pickle_load(tmp_path / "missing.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataFormatError, match="bad.pkl: not a readable pickle"):
        safe_pickle_load(bad)


def test_torch_load_weights_only_refuses_code(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, p)
    with pytest.raises(UnsafeFileError):
        load_torch(p)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    class Boom(Exception):
        pass

    from unseen.io import atomic_path

    with pytest.raises(Boom):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise Boom
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_safetensors_round_trip(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_safetensors(tmp_path / "w.safetensors", t)
    back = load_safetensors(tmp_path / "w.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
