"""Safe reading of torch.save'd numpy pickles (meta.pt, split_dict.pt), written by real torch.save."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import torch

from oocgnn.errors import InputError, InputNotFoundError
from oocgnn.prepare.readers.torch_zip import load_torch_pickle


def _assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b or (a != a and b != b)


def test_numpy_pickle_equals_full_torch_load(tmp_path):
    obj = {"paper": 1501, "author": 997, "num_classes": 153, "name": "x", "ratio": 0.5,
           "train": np.arange(10, dtype=np.int64), "valid": np.array([3, 1], dtype=np.int32),
           "f16": np.ones((2, 3), dtype=np.float16), "fortran": np.asfortranarray(np.eye(3)),
           "empty": np.array([], dtype=np.int64), "scalar": np.int64(7), "nan": np.float64("nan"),
           "nested": [np.arange(3), (1, 2)], "od": OrderedDict(a=np.bool_(True))}
    torch.save(obj, tmp_path / "d.pt")
    _assert_same(load_torch_pickle(tmp_path / "d.pt"), torch.load(tmp_path / "d.pt", weights_only=False))


def test_tensors_come_back_as_numpy(tmp_path):
    torch.save({"train": torch.arange(5), "x": torch.ones(2, 2)}, tmp_path / "t.pt")
    out = load_torch_pickle(tmp_path / "t.pt")
    np.testing.assert_array_equal(out["train"], np.arange(5))
    assert isinstance(out["x"], np.ndarray)
    torch.save({"a": torch.arange(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(load_torch_pickle(tmp_path / "legacy.pt")["a"], np.arange(3))


class _Evil:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    flag = tmp_path / "pwned"
    torch.save({"train": np.arange(3), "x": _Evil(flag)}, tmp_path / "split_dict.pt")
    with pytest.raises(InputError, match=r"split_dict\.pt contains a pickled object of type \w+\.system "
                                         r"that oocgnn will not unpickle"):
        load_torch_pickle(tmp_path / "split_dict.pt")
    assert not flag.exists()


def test_bad_files(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"nope\.pt does not exist"):
        load_torch_pickle(tmp_path / "nope.pt")
    torch.save({"train": np.arange(1000)}, tmp_path / "d.pt")
    raw = (tmp_path / "d.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.pt"):
        load_torch_pickle(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match=r"junk\.pt is not a readable torch file"):
        load_torch_pickle(tmp_path / "junk.pt")
