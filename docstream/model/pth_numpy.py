"""Reading a PyTorch ``.pth`` checkpoint into numpy arrays without importing torch.

``import torch`` alone takes 2.5-4 s on a small machine, longer than a whole CLI query may take, so
the query path reads the embedder's weights with this module instead. A ``torch.save`` file is a zip
archive: ``<name>/data.pkl`` pickles the structure (a dict of tensors), and each tensor's storage is
the raw little-endian bytes of ``<name>/data/<key>``. The pickle is read by a restricted unpickler
that knows only the few names a state dict of tensors uses; any other class, function or object is
refused with a ValueError, so no pickled code ever runs (a checkpoint is untrusted input).

The old non-zip format (torch < 1.6) is not read here: load such a file with torch.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import sys
import zipfile
from collections.abc import Callable, Container
from pathlib import Path

import numpy as np

#: storage classes as torch pickles them ('torch', 'FloatStorage') -> the dtype of their bytes.
#: bf16 is read as uint16 and widened to float32 (numpy has no bfloat16).
_STORAGE_DTYPES = {"FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
                   "LongStorage": "int64"}
#: torch dtype objects (torch.float32 pickles as the global 'torch float32') -> the same names
_TORCH_DTYPES = {"float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
                 "bfloat16": "bfloat16", "int64": "int64", "long": "int64"}


class _Marker:
    """Base of what ``find_class`` hands the pickle: a fresh object per lookup, whose state the pickle's
    BUILD opcode may not set (so a file cannot alter the unpickler's own functions or markers)."""
    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        raise ValueError(f"a checkpoint may not set the state of {type(self).__name__}; refused")


class _StorageType(_Marker):
    """A storage class: only ever a marker inside a persistent id."""
    __slots__ = ("dtype",)

    def __init__(self, dtype: str | None):  # None: torch.storage.UntypedStorage (raw bytes)
        self.dtype = dtype


class _Dtype(_Marker):
    """A torch dtype object (torch >= 2 may pass one alongside an untyped storage)."""
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Function(_Marker):
    """One of the allowed functions, callable by the pickle's REDUCE opcode."""
    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args: object) -> object:
        return self.function(*args)


class _Storage(_Marker):
    """A storage named by the pickle: its key in the archive and dtype; the bytes are read later, if used."""
    __slots__ = ("key", "dtype")

    def __init__(self, key: str, dtype: str):
        self.key, self.dtype = key, dtype


class _Tensor(_Marker):
    """A tensor named by the pickle: where its elements sit in a storage (offset, size, stride in elements)."""
    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _ints(values: object, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple) or not all(type(v) is int and v >= 0 for v in values):
        raise ValueError(f"a tensor's {what} must be a tuple of non-negative ints, got {str(values)[:60]}")
    return values


def _rebuild_tensor_v2(storage: object, storage_offset: object, size: object, stride: object,
                       requires_grad: object = False, backward_hooks: object = None, metadata: object = None
                       ) -> _Tensor:
    """torch._utils._rebuild_tensor_v2, deferred: records the layout; :func:`_materialize` copies it out."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor's storage is {type(storage).__name__}, not a storage of the archive")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    (offset,) = _ints((storage_offset,), "storage offset")
    if len(size) != len(stride):
        raise ValueError(f"a tensor has size {size} but stride {stride}")
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object = False, backward_hooks: object = None) -> object:
    """torch._utils._rebuild_parameter: an nn.Parameter is its data."""
    return data


#: (module, name) -> a maker of what the unpickler may build; nothing else is reachable
_ALLOWED: dict[tuple[str, str], Callable[[], _Marker]] = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): lambda: _Function(_rebuild_parameter),
    ("collections", "OrderedDict"): lambda: _Function(collections.OrderedDict),
    ("torch.storage", "UntypedStorage"): lambda: _StorageType(None),
    ("torch", "UntypedStorage"): lambda: _StorageType(None),
    **{("torch", name): (lambda dtype=dtype: _StorageType(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): (lambda dtype=dtype: _Dtype(dtype)) for name, dtype in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Builds only the names of :data:`_ALLOWED`: a dict of :class:`_Tensor` records, nothing read yet."""

    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        make = _ALLOWED.get((module, name))
        if make is not None:
            return make()
        if module == "torch" and name.endswith("Storage"):
            raise ValueError(f"{self.source} holds a tensor of storage class torch.{name}; reading without torch "
                             f"supports fp32, fp16, bf16 and int64 tensors only: load it with torch "
                             f"(docstream.model.read_checkpoint)")
        raise ValueError(f"{self.source} pickles {module}.{name}, which a checkpoint of tensors never holds; "
                         f"refused (reading without torch allows only tensors and their storages)")

    def persistent_load(self, pid: object) -> _Storage:
        # torch writes ('storage', storage class, key, location, numel); a dtype may follow for untyped storages
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise ValueError(f"{self.source}: unknown persistent id {str(pid)[:80]!r}; expected a torch storage")
        storage_type, key = pid[1], pid[2]
        dtype = storage_type.dtype
        if dtype is None:
            extra = pid[5] if len(pid) > 5 else None
            if not isinstance(extra, _Dtype):
                raise ValueError(f"{self.source}: storage {key!r} is untyped and gives no dtype; read it with torch")
            dtype = extra.name
        return _Storage(key, dtype)


class _Archive:
    """The storages of a torch.save zip archive, each read once (tensors may share one) as a flat array."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str, source: str):
        self.archive, self.prefix, self.byteorder, self.source = archive, prefix, byteorder, source
        self.storages: dict[tuple[str, str], np.ndarray] = {}
        self.handed_out: set[tuple[str, str]] = set()  # storages returned as a tensor themselves

    def tensor(self, name: str, t: _Tensor) -> np.ndarray:
        """The tensor ``t`` as a contiguous array of its own: a strided view of its storage, copied --
        except a tensor that is its whole storage, met first, which gets the storage array itself (fresh
        from :meth:`_read`: one copy less of every weight, the usual case)."""
        key = (t.storage.key, t.storage.dtype)
        storage = self.storage(*key)
        if 0 in t.size:
            return np.zeros(t.size, dtype=storage.dtype)
        if (t.offset == 0 and math.prod(t.size) == storage.size and key not in self.handed_out
                and t.stride == _contiguous_strides(t.size)):
            self.handed_out.add(key)
            return storage.reshape(t.size)
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if last >= storage.size:  # as_strided does not check bounds: never read past the storage
            raise ValueError(f"{self.source}: tensor {name!r} (offset {t.offset}, size {t.size}, stride {t.stride}) "
                             f"reaches element {last} of a storage of {storage.size}: the checkpoint is damaged")
        item = storage.itemsize
        view = np.lib.stride_tricks.as_strided(storage[t.offset:], shape=t.size,
                                               strides=tuple(s * item for s in t.stride), writeable=False)
        return view.copy(order="C")  # contiguous and its own memory, whatever the strides

    def storage(self, key: str, dtype: str) -> np.ndarray:
        if (key, dtype) not in self.storages:
            self.storages[key, dtype] = self._read(key, dtype)
        return self.storages[key, dtype]

    def _read(self, key: str, dtype: str) -> np.ndarray:
        try:
            raw = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise ValueError(f"{self.source} lacks the storage data/{key} its pickle names: the file is damaged "
                             f"or truncated") from None
        order = "<" if self.byteorder == "little" else ">"
        stored = np.dtype(order + ("u2" if dtype == "bfloat16" else np.dtype(dtype).str[1:]))
        if len(raw) % stored.itemsize:
            raise ValueError(f"{self.source}: storage data/{key} has {len(raw)} bytes, not a whole number of "
                             f"{dtype} values: the file is damaged")
        values = np.frombuffer(raw, dtype=stored)  # read-only, over the bytes read: every branch copies
        if dtype == "bfloat16":  # a bf16 value is the top half of the float32 with the same bits
            return np.left_shift(values, 16, dtype=np.uint32).view(np.float32)
        if dtype == "float16":  # fp16 values are exact in float32, the dtype every consumer here computes in
            return values.astype(np.float32)
        return values.astype(np.dtype(dtype).newbyteorder("="))


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    """The strides, in elements, of a C-contiguous tensor of ``size``."""
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def load_pth(path: str | Path, skip: Container[str] = ()) -> dict[str, np.ndarray]:
    """The state dict stored at ``path`` (a ``torch.save`` zip archive) as numpy arrays, without torch.

    Floating tensors (fp32, fp16, bf16) come back as float32 -- fp16 and bf16 values are exactly
    representable there -- and int64 tensors as int64, each a contiguous copy honouring the tensor's
    storage offset, size and stride. Tensors named in ``skip`` are left out unread (an embedder
    needs no LM head). ``ValueError`` names a file that is not such an archive (the
    legacy non-zip format needs torch), an unsupported dtype, or any pickled class besides tensors.
    """
    path = Path(path)
    source = repr(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {source} does not exist (expected a PyTorch .pth file)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{source} is not a zip-format PyTorch checkpoint (it may be the legacy format of "
                         f"torch < 1.6, or not a checkpoint at all); reading it needs torch: "
                         f"docstream.model.read_checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ValueError(f"{source} is a zip archive but not a torch.save checkpoint: expected one "
                                 f"'<name>/data.pkl', found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            names = set(archive.namelist())
            byteorder = (archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names
                         else "little")  # files of torch < 1.10 say nothing: they are little-endian
            if byteorder not in ("little", "big"):
                raise ValueError(f"{source}: unknown byte order {byteorder!r}")
            sd = _Unpickler(archive.read(pickles[0]), source).load()
            if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor)
                                                   for k, v in sd.items()):
                raise ValueError(f"{source} does not hold a state dict of tensors (name -> tensor); "
                                 f"expected a BlinkDL RWKV .pth file")
            storages = _Archive(archive, prefix, byteorder, source)
            return {name: storages.tensor(name, t) for name, t in sd.items() if name not in skip}
    except ValueError:
        raise
    except Exception as err:  # a damaged archive or pickle fails in many ways (BadZipFile, EOFError, TypeError...)
        raise ValueError(f"{source} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); expected "
                         f"a complete, untruncated .pth file") from err


if __name__ == "__main__":  # python -m docstream.model.pth_numpy FILE: the tensors' names, shapes, dtypes
    for name, array in load_pth(sys.argv[1]).items():
        print(name, array.shape, array.dtype)
