"""Reader for MIL weight files (``weights/weight.bin``).

Layout, as written by coremltools' MILBlob storage writer (version 2), all little-endian:

- a 64-byte file header: ``uint32 count``, ``uint32 version``, 56 reserved bytes;
- per blob, a 64-byte metadata record at the offset the program refers to: ``uint32 sentinel``
  (0xDEADBEEF), ``uint32 dtype``, ``uint64 size_in_bytes``, ``uint64 data_offset``,
  ``uint64 padding_size_in_bits`` (sub-byte types only), reserved bytes;
- the data itself at ``data_offset``. Sub-byte types (int4, uint1..uint6) are packed as one
  little-endian bit stream, first element in the lowest bits.

The codes below were read off files that coremltools 9 writes (see tests/runtime/test_blob.py,
which checks every dtype round trip against coremltools' own writer).
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ..errors import ModelPackageError

SENTINEL = 0xDEADBEEF
HEADER_BYTES = 64
METADATA_BYTES = 64

# blob dtype code -> (numpy dtype of the unpacked values, bits per element)
BLOB_DTYPES: dict[int, tuple[np.dtype, int]] = {
    1: (np.dtype(np.float16), 16),
    2: (np.dtype(np.float32), 32),
    3: (np.dtype(np.uint8), 8),
    4: (np.dtype(np.int8), 8),
    6: (np.dtype(np.int16), 16),
    7: (np.dtype(np.uint16), 16),
    8: (np.dtype(np.int8), 4),  # int4
    9: (np.dtype(np.uint8), 1),  # uint1
    10: (np.dtype(np.uint8), 2),  # uint2
    11: (np.dtype(np.uint8), 4),  # uint4
    12: (np.dtype(np.uint8), 3),  # uint3
    13: (np.dtype(np.uint8), 6),  # uint6
    14: (np.dtype(np.int32), 32),
    15: (np.dtype(np.uint32), 32),
}


def unpack_subbyte(raw: np.ndarray, nbits: int, count: int, signed: bool) -> np.ndarray:
    """Unpack ``count`` ``nbits``-wide integers from a little-endian bit stream of bytes."""
    bits = np.unpackbits(np.asarray(raw, dtype=np.uint8), bitorder="little")
    needed = count * nbits
    if bits.size < needed:
        raise ValueError(f"{nbits}-bit stream holds {bits.size // nbits} values, expected {count}")
    grouped = bits[:needed].reshape(count, nbits).astype(np.int16)
    values = (grouped << np.arange(nbits, dtype=np.int16)).sum(axis=1)
    if signed:
        values = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)


class WeightFile:
    """Random access to the blobs of one weight file, with bounds checked against its real size."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.size = os.path.getsize(path)
        except OSError as exc:
            raise ModelPackageError(f"weight file {path!r} is missing or unreadable: {exc}") from None
        if self.size < HEADER_BYTES:
            raise ModelPackageError(
                f"weight file {path!r} is truncated: {self.size} bytes, shorter than its {HEADER_BYTES}-byte header"
            )
        self._file = open(path, "rb")
        count, version = struct.unpack("<II", self._file.read(8))
        self.blob_count, self.version = count, version

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WeightFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, offset: int, nbytes: int, what: str) -> bytes:
        if offset < 0 or offset + nbytes > self.size:
            raise ModelPackageError(
                f"weight file {self.path!r} is truncated or corrupt: {what} needs bytes "
                f"[{offset}, {offset + nbytes}) but the file has {self.size} bytes"
            )
        self._file.seek(offset)
        return self._file.read(nbytes)

    def read(self, offset: int, expected_count: int | None = None) -> np.ndarray:
        """The flat array stored by the blob whose metadata record starts at ``offset``."""
        record = self._read(offset, METADATA_BYTES, f"blob metadata at offset {offset}")
        sentinel, code, nbytes, data_offset, padding_bits = struct.unpack("<IIQQQ", record[:32])
        if sentinel != SENTINEL:
            raise ModelPackageError(
                f"weight file {self.path!r} is corrupt: no blob at offset {offset} "
                f"(sentinel {sentinel:#x}, expected {SENTINEL:#x})"
            )
        if code not in BLOB_DTYPES:
            raise ModelPackageError(f"weight file {self.path!r}: blob at offset {offset} has unknown dtype code {code}")
        dtype, nbits = BLOB_DTYPES[code]
        raw = self._read(data_offset, nbytes, f"blob data of {nbytes} bytes (metadata at offset {offset})")
        where = f"weight file {self.path!r} is corrupt: blob at offset {offset}"
        if nbits >= 8:
            if nbytes % (nbits // 8):
                raise ModelPackageError(f"{where} has {nbytes} data bytes, not a whole number of {nbits}-bit values")
            return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True)
        if padding_bits > 7 or padding_bits > nbytes * 8:
            raise ModelPackageError(f"{where} declares {padding_bits} padding bits in {nbytes} bytes (at most 7)")
        stored = (nbytes * 8 - padding_bits) // nbits
        count = stored if expected_count is None else expected_count
        if count > nbytes * 8 // nbits:
            raise ModelPackageError(
                f"{where} holds {stored} {nbits}-bit values in {nbytes} bytes, but its type needs {count}"
            )
        return unpack_subbyte(np.frombuffer(raw, dtype=np.uint8), nbits, count, signed=(code == 8))
