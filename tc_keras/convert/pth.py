"""Reads PyTorch checkpoint files (.pth, .pth.tar) into NumPy arrays, without torch.

Two on-disk formats exist:

- zip (PyTorch >= 1.6, the default since): a zip archive `<name>/data.pkl` (the pickled object,
  tensors as persistent ids ('storage', storage type, key, location, numel)), `<name>/data/<key>`
  (each storage's raw bytes) and `<name>/byteorder` ("little" or "big"; little when absent).
- legacy (PyTorch < 1.6, and `torch.save(..., _use_new_zipfile_serialization=False)`): five
  pickles in a row (magic number, protocol version, system info, the object with persistent
  ids ('storage', storage type, key, location, numel, view metadata), the list of storage keys),
  then for each key in that order an 8-byte element count and the storage's raw bytes.

A tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`;
this reader turns it into a NumPy array (a copy, C order), whatever device it was saved from
(`torch.cuda.*Storage`, location "cuda:0": read like CPU storages). The unpickler is restricted: it
resolves only the globals a checkpoint of model weights needs (`ALLOWED_GLOBALS`), each mapped
to a function of this module, so no code named by the file is ever imported or run; any other
global is an error naming the file and the global.

Python 2 pickles (the TimeCycle release was written by PyTorch 0.4 under Python 2) are read with
their byte strings decoded as UTF-8, as torch.load does.
"""

import argparse
import collections
import io
import pathlib
import pickle
import zipfile

import numpy as np

# torch.save's legacy format starts with this pickled number, then LEGACY_PROTOCOL.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage classes -> element dtype (little-endian; swapped for big-endian files).
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}


class PthError(ValueError):
    """A file that is not a readable PyTorch checkpoint (the message names the file)."""


class _StorageType:
    """Stands for a torch.*Storage class in the pickle: only its element dtype is kept."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class Namespace(argparse.Namespace):
    """An argparse.Namespace from a checkpoint (training scripts store their arguments)."""


def _bfloat16_to_float32(bits):
    # bfloat16 is the top half of a float32: (N,) uint16 -> (N,) float32.
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """(storage, offset, size, stride) -> a C-ordered NumPy copy of that strided view."""
    data, bfloat16 = storage
    size = tuple(int(s) for s in size)
    if not size:
        view = data[storage_offset:storage_offset + 1].reshape(())
    else:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else 0
        if all(size) and last >= data.size:
            raise PthError(f"tensor of size {size} and stride {tuple(stride)} at offset "
                           f"{storage_offset} overruns its storage of {data.size} elements")
        view = np.lib.stride_tricks.as_strided(
            data[storage_offset:], shape=size,
            strides=tuple(int(s) * data.itemsize for s in stride), writeable=False)
    out = np.array(view, order="C")  # a copy (ascontiguousarray would make 0-d arrays 1-d)
    return _bfloat16_to_float32(out) if bfloat16 else out


def _rebuild_parameter(data, *unused):
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


def _counter(*args):
    return collections.Counter(*args)


# (module, name) -> what the unpickler returns for it. Everything else is refused.
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    # lr schedulers keep milestones in a Counter; training scripts store their argparse args.
    ("collections", "Counter"): _counter,
    ("argparse", "Namespace"): Namespace,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
    # Tensors saved from a GPU (both releases were trained on GPUs): read into host memory.
    **{("torch.cuda", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; storages come from `load_storage(type, key, numel)`.

    With `scan=True` tensors are not built (the legacy format's storages follow the pickle: a
    first pass only records which storages exist).
    """

    def __init__(self, file, path, load_storage, scan=False):
        super().__init__(file, encoding="utf-8")
        self.path = path
        self.load_storage = load_storage
        self.scan = scan
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise PthError(f"{self.path}: refusing to load {module}.{name} (only PyTorch tensors, "
                           f"dicts, lists and numbers are read from checkpoints)")
        found = ALLOWED_GLOBALS[module, name]
        if self.scan and found is _rebuild_tensor:
            return _skip
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise PthError(f"{self.path}: unknown persistent id {str(pid)[:80]}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise PthError(f"{self.path}: storage {key} has no storage type")
        if key not in self.storages:
            data = self.load_storage(storage_type, key, numel)
            self.storages[key] = (data, storage_type.name == "BFloat16Storage")
        data, bfloat16 = self.storages[key]
        if view is not None and data is not None:  # (view key, offset, size) of the root storage
            _, offset, view_size = view
            return data[int(offset):int(offset) + int(view_size)], bfloat16
        return data, bfloat16


def _skip(*unused):
    return None


def _from_bytes(raw, dtype, numel, big_endian, path, key):
    """(numel,) array of `dtype` (native order) from a storage's raw bytes."""
    if len(raw) < numel * dtype.itemsize:
        raise PthError(f"{path}: storage {key} holds {len(raw)} bytes, expected "
                       f"{numel * dtype.itemsize} (truncated file?)")
    if big_endian:
        return np.frombuffer(raw, dtype.newbyteorder(">"), count=numel).astype(dtype)
    return np.frombuffer(raw, dtype, count=numel)


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise PthError(f"{path}: a zip file but not a PyTorch checkpoint (expected one "
                           f"<name>/data.pkl, found {len(pickles)})")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = (archive.read(prefix + "byteorder").decode().strip()
                     if prefix + "byteorder" in names else "little")

        def load_storage(storage_type, key, numel):
            name = f"{prefix}data/{key}"
            if name not in names:
                raise PthError(f"{path}: storage {name} is missing")
            return _from_bytes(archive.read(name), storage_type.dtype, numel,
                               byteorder == "big", path, key)

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), path, load_storage).load()


def _load_legacy(path, f):
    try:
        magic = pickle.load(f)
    except Exception:  # noqa: BLE001 (any failure means "not this format")
        magic = None
    if magic != LEGACY_MAGIC:
        raise PthError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy "
                       f"format's magic number)")
    protocol = pickle.load(f)
    if protocol != LEGACY_PROTOCOL:
        raise PthError(f"{path}: legacy PyTorch format version {protocol}, expected "
                       f"{LEGACY_PROTOCOL}")
    sys_info = pickle.load(f, encoding="utf-8")
    if not sys_info.get("little_endian", True):
        raise PthError(f"{path}: written on a big-endian machine, which is not supported")
    # Pass 1: which storages the object uses (their bytes come after the pickle).
    start = f.tell()
    pending = {}  # key -> (dtype, numel)

    def note_storage(storage_type, key, numel):
        pending[key] = (storage_type.dtype, numel)

    _Unpickler(f, path, note_storage, scan=True).load()
    keys = pickle.load(f, encoding="utf-8")
    loaded = {}
    for key in map(str, keys):
        header = f.read(8)
        if len(header) < 8:
            raise PthError(f"{path}: storage {key} is missing (truncated file?)")
        count = int(np.frombuffer(header, "<i8")[0])
        if key not in pending:
            raise PthError(f"{path}: storage {key} is listed but no tensor uses it")
        dtype, numel = pending[key]
        if count != numel:
            raise PthError(f"{path}: storage {key} holds {count} elements, expected {numel}")
        loaded[key] = _from_bytes(f.read(numel * dtype.itemsize), dtype, numel, False, path, key)
    missing = sorted(set(pending) - set(loaded))
    if missing:
        raise PthError(f"{path}: storages {', '.join(missing[:5])} are missing")
    # Pass 2: the object, with its tensors.
    f.seek(start)
    return _Unpickler(f, path, lambda storage_type, key, numel: loaded[key]).load()


def load(path):
    """The object saved by `torch.save` in `path`, with every tensor as a NumPy array.

    bfloat16 tensors come back as float32. Dicts keep their type (OrderedDict for state dicts).

    Raises:
      PthError (a ValueError) naming `path` when the file is missing, is not a PyTorch checkpoint,
      is truncated, or pickles anything other than tensors and plain containers.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise PthError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            return _load_legacy(path, f)
    except PthError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, TypeError,
            KeyError, IndexError, AttributeError, UnicodeDecodeError) as e:
        raise PthError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                       f"{str(e)[:120]})") from None
