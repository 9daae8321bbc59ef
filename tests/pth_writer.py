"""A tiny writer of PyTorch checkpoint files without torch, for tests of tc_keras.convert.pth.

Writes both on-disk formats of `torch.save` (described in tc_keras/convert/pth.py): the zip archive and
the legacy stream. Tensors are NumPy arrays (or `Strided` views into a shared storage); they are
pickled as torch does, as `torch._utils._rebuild_tensor_v2` over a persistent storage id.
`py2_strings=True` writes str as Python 2 byte strings (BINSTRING), as the 2019 TimeCycle
release (PyTorch 0.4 under Python 2) was written.

It uses the pure-Python `pickle._Pickler`, whose per-type dispatch table is the only way to
write a GLOBAL for a module that need not be importable here (torch).
"""

import collections
import dataclasses
import io
import pickle
import struct
import zipfile

import numpy as np

STORAGE_TYPES = {np.dtype(k): v for k, v in {
    "<f8": "DoubleStorage", "<f4": "FloatStorage", "<f2": "HalfStorage", "<i8": "LongStorage",
    "<i4": "IntStorage", "<i2": "ShortStorage", "i1": "CharStorage", "u1": "ByteStorage",
    "?": "BoolStorage"}.items()}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


@dataclasses.dataclass(frozen=True)
class Global:
    """A reference to `module.name`, written as a pickle GLOBAL."""
    module: str
    name: str

    def __call__(self, *args):  # pickle.save_reduce requires a callable
        raise TypeError("only written, never called")


@dataclasses.dataclass
class Strided:
    """A tensor viewing `storage` (a 1-D array) at an element offset with element strides."""
    storage: np.ndarray
    offset: int
    size: tuple
    stride: tuple


class _Writer(pickle._Pickler):  # noqa: SLF001 (see the module docstring)
    dispatch = dict(pickle._Pickler.dispatch)  # noqa: SLF001

    def __init__(self, file, legacy, py2_strings, cuda):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.py2_strings = py2_strings
        self.cuda = cuda
        self.storages = {}  # id(storage array) -> (key, array)

    def persistent_id(self, obj):
        if not isinstance(obj, np.ndarray) or obj.ndim != 1 or id(obj) not in self.storages:
            return None
        key, array = self.storages[id(obj)]
        module, location = ("torch.cuda", "cuda:0") if self.cuda else ("torch", "cpu")
        pid = ("storage", Global(module, STORAGE_TYPES[array.dtype]), key, location, array.size)
        return pid + (None,) if self.legacy else pid

    def _register(self, storage):
        if id(storage) not in self.storages:
            self.storages[id(storage)] = (str(len(self.storages)), storage)
        return storage

    def save_tensor(self, obj):
        if isinstance(obj, Strided):
            storage, offset, size, stride = obj.storage, obj.offset, obj.size, obj.stride
        else:
            array = np.array(obj, order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
            storage = array.reshape(-1)
            size, offset = array.shape, 0
            stride = tuple(s // array.itemsize for s in array.strides)
        self._register(storage)
        self.save_reduce(Global("torch._utils", "_rebuild_tensor_v2"),
                         (storage, offset, tuple(size), tuple(stride), False,
                          collections.OrderedDict()), obj=None)

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def save_py2_str(self, obj):
        data = obj.encode("utf-8")
        if self.py2_strings:
            if len(data) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
            self.memoize(obj)
        else:
            pickle._Pickler.save_str(self, obj)  # noqa: SLF001

    dispatch[np.ndarray] = save_tensor  # storages never get here: persistent_id
    dispatch[Strided] = save_tensor
    dispatch[Global] = save_global_ref
    dispatch[str] = save_py2_str


def _pickle(obj, legacy, py2_strings, cuda=False):
    buffer = io.BytesIO()
    writer = _Writer(buffer, legacy, py2_strings, cuda)
    writer.dump(obj)
    return buffer.getvalue(), list(writer.storages.values())


def write_pth(path, obj, legacy=False, py2_strings=False, cuda=False):
    """Writes `obj` (dicts, lists, numbers, str, NumPy arrays) as torch.save would.

    `cuda`: as saved from GPU tensors (torch.cuda.*Storage, location "cuda:0"), as a model
    trained on GPUs and saved without moving it to the CPU is.
    """
    data, storages = _pickle(obj, legacy, py2_strings, cuda)
    if not legacy:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", data)
            archive.writestr("archive/byteorder", "little")
            for key, array in storages:
                archive.writestr(f"archive/data/{key}", array.tobytes())
            archive.writestr("archive/version", "3\n")
        return path
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                       {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            f.write(_pickle(header, True, py2_strings)[0])
        f.write(data)
        f.write(_pickle([key for key, _ in storages], True, py2_strings)[0])
        for _, array in storages:
            f.write(struct.pack("<q", array.size))
            f.write(array.tobytes())
    return path
