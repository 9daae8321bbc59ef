"""tc_keras.convert.pth: PyTorch checkpoints (zip and legacy formats) read without torch."""

import argparse
import collections
import pickle
import zipfile

import numpy as np
import pytest

from tc_keras.convert import pth
from tests.pth_writer import Strided, write_pth


def _sample():
    """A checkpoint-like object: tensors of several dtypes and layouts, plain containers."""
    rng = np.random.default_rng(0)
    base = np.arange(12, dtype=np.float32)
    state = collections.OrderedDict([
        ("conv.weight", rng.normal(size=(4, 3, 1, 3, 3)).astype(np.float32)),
        ("bn.running_var", rng.uniform(size=5).astype(np.float64)),
        ("half", rng.normal(size=(2, 3)).astype(np.float16)),
        ("bn.num_batches_tracked", np.array(7, np.int64)),
        ("mask", np.array([True, False, True])),
        ("bytes", np.arange(5, dtype=np.uint8)),
        ("empty", np.zeros((0, 3), np.float32)),
        ("transposed", Strided(base, 0, (4, 3), (1, 4))),  # a non-contiguous view
        ("row", Strided(base, 8, (4,), (1,))),  # shares the storage, at an offset
    ])
    return {"epoch": 14, "state_dict": state, "args": argparse.Namespace(lr=2e-4, name="x"),
            "milestones": collections.Counter([20, 30]), "names": ["a", ("b", 1.5)]}


def _expected(obj):
    base = np.arange(12, dtype=np.float32)
    want = {k: v for k, v in obj["state_dict"].items() if isinstance(v, np.ndarray)}
    want["transposed"] = base.reshape(3, 4).T
    want["row"] = base[8:12]
    return want


@pytest.mark.parametrize("legacy,py2,cuda", [
    (False, False, False), (True, False, False),
    (True, True, True),  # PyTorch 0.4 under Python 2, saved from the GPU (the TimeCycle release)
    (False, False, True)])
def test_reads_both_formats_without_torch(tmp_path, legacy, py2, cuda):
    obj = _sample()
    path = write_pth(tmp_path / "ckpt.pth", obj, legacy=legacy, py2_strings=py2, cuda=cuda)
    got = pth.load(path)
    assert type(got["state_dict"]) is collections.OrderedDict
    assert list(got["state_dict"]) == list(obj["state_dict"])
    for key, want in _expected(obj).items():
        value = got["state_dict"][key]
        assert value.dtype == want.dtype and value.shape == want.shape, key
        np.testing.assert_array_equal(value, want, err_msg=key)
    assert got["epoch"] == 14 and got["names"] == ["a", ("b", 1.5)]
    assert got["args"].lr == 2e-4 and got["args"].name == "x"
    assert got["milestones"] == collections.Counter([20, 30])


@pytest.mark.parametrize("legacy", [False, True])
def test_reads_files_written_by_torch(tmp_path, legacy):
    torch = pytest.importorskip("torch", reason="torch (extra 'test') writes the real files")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict([
        ("w", torch.randn(3, 2, 1, 3, 3, generator=torch.Generator().manual_seed(0))),
        ("t", base.t()), ("slice", base[1:3, 2:]), ("n", torch.tensor(5)),
        ("b", torch.tensor([1.5, -2.25], dtype=torch.bfloat16)),
        ("d", torch.ones(2, dtype=torch.float64)), ("i", torch.arange(3, dtype=torch.int32))])
    state._metadata = collections.OrderedDict([("", {"version": 2})])
    path = tmp_path / "t.pth"
    torch.save({"epoch": 3, "state_dict": state}, path, _use_new_zipfile_serialization=not legacy)
    got = pth.load(path)["state_dict"]
    for key, value in state.items():
        want = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        assert got[key].shape == want.shape and got[key].dtype == want.dtype, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)


def test_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
    with pytest.raises(pth.PthError, match=r"evil\.pth.*refusing to load .*open"):
        pth.load(path)
    assert not marker.exists()
    # The same in the legacy format.
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in (
        pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL, {"little_endian": True}, Evil())))
    with pytest.raises(pth.PthError, match="refusing to load"):
        pth.load(legacy)
    assert not marker.exists()


def test_not_a_checkpoint_or_truncated_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("model.json", "{}")
    good = write_pth(tmp_path / "good.pth", _sample(), legacy=True)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:-100])
    for name, message in (("notes.txt", "not a PyTorch checkpoint"), ("other.zip", "data.pkl"),
                          ("cut.pth", "truncated"), ("missing.pth", "no such file")):
        with pytest.raises(pth.PthError, match=message) as info:
            pth.load(tmp_path / name)
        assert name in str(info.value)
