"""NumPy arrays memory-mapped from an uncompressed .npz archive (np.savez), read batch by batch.

`np.savez` stores each array uncompressed and contiguous inside the zip file, so it can be
mapped in place: no copy, nothing read until a batch needs it. An archive bigger than
STREAM_BYTES (or `stream: true`) whose input arrays are stored this way is streamed: the
targets (small) are loaded to split and check labels as usual, the inputs stay on disk and
each batch gathers its rows (sorted indices, one fancy-index per batch) in
`tf.numpy_function`. Compressed members (np.savez_compressed) cannot be mapped: those
archives are read into memory, or refused with a hint when `stream: true` asks otherwise.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

from .table import file_error

STREAM_BYTES = 256 * 2 ** 20


def map_member(path: str, key: str) -> np.ndarray:
    """Array `key` of the npz at `path`, memory-mapped read-only (it must be stored uncompressed)."""
    with zipfile.ZipFile(path) as z:
        name = key if key in z.namelist() else f"{key}.npy"
        info = z.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            raise file_error(path, f"array {key!r} is compressed (np.savez_compressed), so it cannot be "
                             "memory-mapped", hint="save the archive with np.savez, or `stream: false`")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise file_error(path, f"array {key!r}: damaged zip entry")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(fh)
        offset = fh.tell()
    if dtype.hasobject or fortran:
        raise file_error(path, f"array {key!r} cannot be memory-mapped (object or Fortran-ordered array)")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if offset + need > os.path.getsize(path) or need > info.file_size:
        raise file_error(path, f"array {key!r} declares more bytes than the file holds: damaged or crafted")
    if len(shape) == 0:
        raise file_error(path, f"array {key!r} is a single value (0-d), not one entry per example")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


_MAPS: dict[tuple[str, str], np.ndarray] = {}


def mapped(path: str, key: str) -> np.ndarray:
    """`map_member`, opened once per process (each batch would otherwise re-read the zip directory)."""
    if (path, key) not in _MAPS:
        _MAPS[(path, key)] = map_member(path, key)
    return _MAPS[(path, key)]


def wants_stream(path: str, choice) -> bool:
    if choice is True or choice is False:
        return choice
    try:
        return os.stat(path).st_size > STREAM_BYTES
    except OSError:
        return False


@dataclass(frozen=True)
class ArrayReader:
    """Reads batches of rows of memory-mapped arrays (one per model input) by example index."""

    path: str
    keys: tuple[tuple[str, str], ...]            # (input name, npz key)
    shapes: tuple[tuple[int, ...], ...]          # per input, one example's shape
    dtypes: tuple[str, ...]                      # per input, the dtype fed to the model
    batched = True

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: mapped(self.path, key) for name, key in self.keys}

    def bytes_per_example(self) -> int:
        return sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in zip(self.shapes, self.dtypes))

    def rows(self, index: np.ndarray) -> list[np.ndarray]:
        """The rows `index` (in that order) of each input, read with one sorted gather per array."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        out = []
        for (name, _), dtype, mm in zip(self.keys, self.dtypes, self.arrays().values()):
            out.append(np.asarray(mm[index[order]])[back].astype(dtype, copy=False))
        return out

    def batch(self, index):
        """tf: a batch of example indices -> the input tensor(s) of those examples."""
        import tensorflow as tf

        outs = tf.numpy_function(lambda i: self.rows(i), [index], [tf.as_dtype(d) for d in self.dtypes],
                                 stateful=False)
        outs = [tf.ensure_shape(o, (None, *s)) for o, s in zip(outs, self.shapes)]
        return outs[0] if len(outs) == 1 else dict(zip([n for n, _ in self.keys], outs))

    def read_many(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip([n for n, _ in self.keys], self.rows(index)))
