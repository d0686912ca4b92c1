"""ADM-format ``.npz`` batches: streaming read, small-array read, streaming atomic write.

The ADM evaluation suite (openai/guided-diffusion ``evaluations/evaluator.py``) exchanges images as an
``.npz`` whose ``arr_0`` is ``uint8`` N x H x W x 3 (NHWC, RGB) and whose optional ``arr_1`` holds int
labels; reference batches may also carry ``mu``/``sigma``/``mu_s``/``sigma_s`` statistics
(``shared/reference/evaluation.md`` section 1.2). Like the ADM evaluator, :func:`iter_npz_images` streams
``arr_0`` from the zip member in batches, so a 50 000 x 256 x 256 x 3 array (~9.8 GB) never has to fit in
RAM. :class:`NpzWriter` writes the same layout image batch by image batch into a zip64 archive that plain
``np.load`` reads.

An ``.npz`` is a zip archive with one ``<key>.npy`` member per array (stored by ``np.savez``, deflated by
``np.savez_compressed``). A ``.npy`` member starts with the magic ``\\x93NUMPY``, a major/minor version byte
pair, a little-endian header length (2 bytes for version 1, 4 bytes for versions 2 and 3), and a Python
literal dict header ``{'descr', 'fortran_order', 'shape'}`` (latin-1 for v1/v2, utf-8 for v3); the raw
C-order data follows.
"""
from __future__ import annotations

import ast
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np

__all__ = ["NpzInfo", "NpzWriter", "inspect_npz", "iter_npz_images", "read_npz_array"]

_MAGIC = b"\x93NUMPY"


@dataclass
class NpzInfo:
    """What an ``.npz`` holds, read from the zip directory and each member's ``.npy`` header only.

    Attributes:
        path: the file.
        keys: array names in archive order (``"arr_0"``, ``"arr_1"``, ``"mu"``, ...), without ``.npy``.
        shapes: key -> shape tuple.
        dtypes: key -> numpy dtype.
        fortran_order: key -> whether the array is stored in Fortran order.
        compressed: key -> whether the zip member is deflated (``np.savez_compressed``).
    """

    path: Path
    keys: list[str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    fortran_order: dict[str, bool] = field(default_factory=dict)
    compressed: dict[str, bool] = field(default_factory=dict)


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes (zip streams may return short reads); ValueError on early EOF."""
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            raise ValueError(f"{what}: unexpected end of data ({n - remaining} of {n} bytes read)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_npy_header(stream: IO[bytes], what: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    """Parse a ``.npy`` header (format versions 1, 2 and 3) from ``stream``, leaving it at the data.

    Returns:
        ``(dtype, shape, fortran_order)``.

    Raises:
        ValueError: not a ``.npy`` stream, unknown version, or malformed header dict.
    """
    prefix = _read_exact(stream, 8, what)
    if prefix[:6] != _MAGIC:
        raise ValueError(f"{what}: not a .npy member (magic {prefix[:6]!r}, expected {_MAGIC!r})")
    major = prefix[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", _read_exact(stream, 2, what))
    elif major in (2, 3):
        (hlen,) = struct.unpack("<I", _read_exact(stream, 4, what))
    else:
        raise ValueError(f"{what}: unsupported .npy format version {major}.{prefix[7]} (expected 1, 2 or 3)")
    raw = _read_exact(stream, hlen, what)
    text = raw.decode("utf-8" if major == 3 else "latin1")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{what}: malformed .npy header {text!r}") from exc
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise ValueError(f"{what}: .npy header lacks descr/fortran_order/shape: {text!r}")
    dtype = np.lib.format.descr_to_dtype(header["descr"])
    return dtype, tuple(int(s) for s in header["shape"]), bool(header["fortran_order"])


def _member_name(zf: zipfile.ZipFile, key: str, path: Path) -> str:
    name = key if key.endswith(".npy") else key + ".npy"
    if name not in zf.namelist():
        keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        raise KeyError(f"{path}: no array {key!r} (keys: {keys})")
    return name


def _open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        return zipfile.ZipFile(path, "r")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not an .npz (zip) file: {exc}") from exc


def inspect_npz(path: str | os.PathLike) -> NpzInfo:
    """List the arrays of an ``.npz`` with shapes and dtypes without reading their data.

    Reads the zip central directory and the first bytes (the ``.npy`` header) of each member; works for
    stored (``np.savez``) and deflated (``np.savez_compressed``) archives.

    Args:
        path: ``.npz`` file.

    Returns:
        :class:`NpzInfo`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a zip archive, or a member is not a valid ``.npy``.
    """
    path = Path(path)
    info = NpzInfo(path=path, keys=[], shapes={}, dtypes={})
    with _open_zip(path) as zf:
        for member in zf.infolist():
            if not member.filename.endswith(".npy"):
                continue
            key = member.filename[:-4]
            with zf.open(member) as stream:
                dtype, shape, fortran = _read_npy_header(stream, f"{path}:{member.filename}")
            info.keys.append(key)
            info.shapes[key] = shape
            info.dtypes[key] = dtype
            info.fortran_order[key] = fortran
            info.compressed[key] = member.compress_type != zipfile.ZIP_STORED
    return info


def read_npz_array(path: str | os.PathLike, key: str) -> np.ndarray:
    """Load one (small) array of an ``.npz`` fully, e.g. ``arr_1`` labels or ``mu``/``sigma`` statistics.

    Args:
        path: ``.npz`` file.
        key: array name without ``.npy`` (``"arr_1"``, ``"mu"``, ...).

    Returns:
        The array with its stored dtype and shape (object arrays are refused: ``allow_pickle=False``).

    Raises:
        FileNotFoundError, ValueError: as :func:`inspect_npz`.
        KeyError: ``key`` is not in the archive (the message lists the keys that are).
    """
    path = Path(path)
    with _open_zip(path) as zf:
        name = _member_name(zf, key, path)
        with zf.open(name) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)


def iter_npz_images(path: str | os.PathLike, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Stream an array of an ``.npz`` in batches along its first axis (the ADM evaluator's reading mode).

    Memory use is one batch (plus zlib's window for deflated members), whatever N is. Fortran-order
    arrays cannot be streamed along axis 0 and are loaded fully (as the ADM evaluator does), then sliced.

    Args:
        path: ``.npz`` file, e.g. an ADM sample batch (``arr_0`` uint8 N x H x W x 3).
        batch_size: rows per yielded batch (> 0); the last batch may be shorter.
        key: array name (default ``"arr_0"``).

    Yields:
        Arrays of shape ``(b, *shape[1:])`` with the stored dtype (uint8 NHWC for ADM images), C-contiguous
        and writable, ``b <= batch_size``; N rows in total, in stored order.

    Raises:
        ValueError: ``batch_size < 1``, a 0-d array, an object dtype, or a truncated member.
        KeyError: ``key`` missing. FileNotFoundError: ``path`` missing.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    with _open_zip(path) as zf:
        name = _member_name(zf, key, path)
        what = f"{path}:{name}"
        with zf.open(name) as stream:
            dtype, shape, fortran = _read_npy_header(stream, what)
            if dtype.hasobject:
                raise ValueError(f"{what}: object arrays are not supported (dtype {dtype})")
            if len(shape) == 0:
                raise ValueError(f"{what}: cannot batch a 0-d array")
            if fortran:
                full = np.asfortranarray(
                    np.frombuffer(_read_exact(stream, int(np.prod(shape)) * dtype.itemsize, what), dtype=dtype)
                    .reshape(shape[::-1])
                    .transpose()
                )
                for start in range(0, shape[0], batch_size):
                    yield np.ascontiguousarray(full[start : start + batch_size])
                return
            row_items = int(np.prod(shape[1:], dtype=np.int64))
            row_bytes = row_items * dtype.itemsize
            for start in range(0, shape[0], batch_size):
                rows = min(batch_size, shape[0] - start)
                buf = bytearray(_read_exact(stream, rows * row_bytes, what))
                yield np.frombuffer(buf, dtype=dtype).reshape((rows, *shape[1:]))


class NpzWriter:
    """Write an ADM-format batch (``arr_0`` uint8 N x H x W x 3, ``arr_1`` int64 N) batch by batch.

    The images stream into a zip64 ``arr_0.npy`` member (stored, like ``np.savez``); labels (8 bytes per
    image) are kept in memory and written as ``arr_1.npy`` on close. The archive is written to a temporary
    file beside ``path`` and moved into place with ``os.replace`` only when the context exits cleanly with
    exactly ``count`` images written; on any error the temporary file is removed and ``path`` is untouched.

    Example::

        with NpzWriter("ref.npz", count=n, height=256, width=256) as writer:
            for images, labels in batches:   # uint8 (b, 256, 256, 3), int64 (b,)
                writer.write(images, labels)

    Args:
        path: output ``.npz`` (parent folder must exist).
        count: total number of images N that will be written (>= 0).
        height, width: image size in pixels (>= 1).
        with_labels: write ``arr_1``; when False, :meth:`write` takes no labels.

    Raises:
        ValueError: bad arguments; on :meth:`write`, wrong dtype/shape or more than ``count`` images;
            on close, fewer than ``count`` images.
    """

    def __init__(self, path: str | os.PathLike, count: int, height: int, width: int, with_labels: bool = True):
        if count < 0 or height < 1 or width < 1:
            raise ValueError(f"NpzWriter: need count >= 0 and height, width >= 1, got {count}, {height}, {width}")
        self.path = Path(path)
        self.count, self.height, self.width, self.with_labels = int(count), int(height), int(width), with_labels
        self.written = 0
        self._labels: list[np.ndarray] = []
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._zip: zipfile.ZipFile | None = None
        self._stream: IO[bytes] | None = None

    # -- context management -------------------------------------------------------------------------
    def __enter__(self) -> "NpzWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temporary archive and write the ``arr_0`` header."""
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"NpzWriter: output folder does not exist: {self.path.parent}")
        self._zip = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._stream = self._zip.open("arr_0.npy", "w", force_zip64=True)
        header = {"descr": "|u1", "fortran_order": False, "shape": (self.count, self.height, self.width, 3)}
        np.lib.format.write_array_header_1_0(self._stream, header)

    def write(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append a batch.

        Args:
            images: uint8 array (b, height, width, 3), RGB, values 0..255.
            labels: int64 array (b,) (required iff ``with_labels``); any integer dtype is accepted and
                stored as int64.

        Raises:
            ValueError: wrong dtype or shape, labels missing/extra, or more than ``count`` images in total.
            RuntimeError: the writer is not open.
        """
        if self._stream is None:
            raise RuntimeError(f"NpzWriter({self.path}): write() outside an open writer")
        images = np.asarray(images)
        expected = (self.height, self.width, 3)
        if images.dtype != np.uint8:
            raise ValueError(f"NpzWriter({self.path}): images must be uint8, got {images.dtype}")
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"NpzWriter({self.path}): images must have shape (b, {self.height}, {self.width}, 3), "
                             f"got {images.shape}")
        b = images.shape[0]
        if self.with_labels:
            if labels is None:
                raise ValueError(f"NpzWriter({self.path}): labels required (with_labels=True)")
            labels = np.asarray(labels)
            if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (b,):
                raise ValueError(f"NpzWriter({self.path}): labels must be an integer array of shape ({b},), "
                                 f"got {labels.dtype} {labels.shape}")
        elif labels is not None:
            raise ValueError(f"NpzWriter({self.path}): labels given but with_labels=False")
        if self.written + b > self.count:
            raise ValueError(f"NpzWriter({self.path}): {self.written + b} images exceed the declared count {self.count}")
        self._stream.write(memoryview(np.ascontiguousarray(images)).cast("B"))
        if self.with_labels:
            self._labels.append(labels.astype(np.int64))
        self.written += b

    def close(self) -> None:
        """Finish ``arr_1``, check the count and move the archive into place.

        Raises:
            ValueError: fewer images than ``count`` were written (the temporary file is removed).
        """
        if self._zip is None:
            return
        if self.written != self.count:
            self.abort()
            raise ValueError(f"NpzWriter({self.path}): wrote {self.written} images, declared count {self.count}")
        try:
            assert self._stream is not None
            self._stream.close()
            self._stream = None
            if self.with_labels:
                labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
                with self._zip.open("arr_1.npy", "w", force_zip64=True) as stream:
                    np.lib.format.write_array(stream, labels, allow_pickle=False)
            self._zip.close()
            self._zip = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the partial archive (no-op if already closed)."""
        for closer in (self._stream, self._zip):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # the archive is being discarded anyway
                    pass
        self._stream = self._zip = None
        self._tmp.unlink(missing_ok=True)
