"""The weight-file reader (``conversions.runtime.mil.blob``) against coremltools' own MILBlob writer.

Every blob dtype the writer supports is written with hypothesis-chosen lengths and values and read back;
truncated and corrupted files must raise ``ModelPackageError`` naming the offset and the sizes involved.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from coremltools.libmilstoragepython import _BlobStorageWriter

from conversions.runtime import ModelPackageError, load_model
from conversions.runtime.mil.blob import HEADER_BYTES, METADATA_BYTES, WeightFile
from conversions.testing import convert_module

# kind -> (writer method, numpy dtype the writer takes and the reader returns, value strategy)
_INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1),
               "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1), "int4": (-8, 7)}
_INT_RANGES.update({f"uint{n}": (0, 2**n - 1) for n in (1, 2, 3, 4, 6)})
KINDS = {
    "fp16": ("write_fp16_data", np.float16, st.floats(width=16, allow_nan=True, allow_infinity=True)),
    "fp32": ("write_float_data", np.float32, st.floats(width=32, allow_nan=True, allow_infinity=True)),
}
SUB_BYTE = {"int4", "uint1", "uint2", "uint3", "uint4", "uint6"}
for _kind, (_low, _high) in _INT_RANGES.items():
    # Sub-byte values travel unpacked, one per int8 (int4) or uint8 (uintN) element, both ways.
    _dtype = np.int8 if _kind == "int4" else np.uint8 if _kind in SUB_BYTE else np.dtype(_kind).type
    KINDS[_kind] = (f"write_{_kind}_data", _dtype, st.integers(_low, _high))


def _bits(a: np.ndarray) -> np.ndarray:
    """Floats compared bit for bit (NaN payloads, signed zeros), integers as they are."""
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32) if a.dtype.kind == "f" else a


def write_blobs(path: str, blobs: list[tuple[str, np.ndarray]]) -> list[int]:
    """Write ``blobs`` with coremltools' writer; returns their metadata offsets."""
    writer = _BlobStorageWriter(str(path))
    offsets = []
    for kind, values in blobs:
        arg = values.view(np.uint16) if kind == "fp16" else values
        offsets.append(getattr(writer, KINDS[kind][0])(np.ascontiguousarray(arg)))
    del writer  # flushes and closes the file
    return offsets


@st.composite
def blob_lists(draw, max_blobs=6):
    blobs = []
    for _ in range(draw(st.integers(1, max_blobs))):
        kind = draw(st.sampled_from(sorted(KINDS)))
        _, dtype, values = KINDS[kind]
        blobs.append((kind, np.array(draw(st.lists(values, min_size=1, max_size=40)), dtype=dtype)))
    return blobs


@given(blobs=blob_lists())
def test_every_dtype_round_trips(tmp_path_factory, blobs):
    path = tmp_path_factory.mktemp("blob") / "weight.bin"
    offsets = write_blobs(path, blobs)
    with WeightFile(str(path)) as wf:
        assert (wf.blob_count, wf.version) == (len(blobs), 2)
        for (kind, values), offset in zip(blobs, offsets):
            got = wf.read(offset)
            assert got.dtype == values.dtype, f"{kind}: read as {got.dtype}"
            np.testing.assert_array_equal(_bits(got), _bits(values), err_msg=kind)
            if kind in SUB_BYTE:  # the count the program's type gives, as program.py passes it
                np.testing.assert_array_equal(wf.read(offset, values.size), values, err_msg=kind)


def _data_end(path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        _, _, nbytes, data_offset = struct.unpack("<IIQQ", f.read(24))
    return data_offset + nbytes


@given(blobs=blob_lists(), cut_fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_file_names_offset_and_size(tmp_path_factory, blobs, cut_fraction):
    path = tmp_path_factory.mktemp("blob") / "weight.bin"
    offsets = write_blobs(path, blobs)
    ends = [_data_end(path, o) for o in offsets]
    cut = int(cut_fraction * os.path.getsize(path))
    with open(path, "r+b") as f:
        f.truncate(cut)
    if cut < HEADER_BYTES:
        with pytest.raises(ModelPackageError, match=rf"truncated: {cut} bytes, shorter than its {HEADER_BYTES}-byte"):
            WeightFile(str(path))
        return
    with WeightFile(str(path)) as wf:
        for (kind, values), offset, end in zip(blobs, offsets, ends):
            if offset + METADATA_BYTES > cut:
                with pytest.raises(ModelPackageError, match=rf"metadata at offset {offset} .* file has {cut} bytes"):
                    wf.read(offset)
            elif end > cut:
                with pytest.raises(ModelPackageError, match=rf"metadata at offset {offset}\).*{end}\) but the "
                                                            rf"file has {cut} bytes"):
                    wf.read(offset)
            else:  # blobs wholly before the cut are intact
                np.testing.assert_array_equal(_bits(wf.read(offset)), _bits(values), err_msg=kind)


@pytest.fixture
def two_blobs(tmp_path):
    path = tmp_path / "weight.bin"
    offsets = write_blobs(path, [("fp16", np.arange(6, dtype=np.float16)), ("uint4", np.arange(5, dtype=np.uint8))])
    return path, offsets


def _patch(path, at: int, fmt: str, value) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, at, value)
    path.write_bytes(bytes(data))


def test_corrupt_sentinel_is_reported(two_blobs):
    path, (first, second) = two_blobs
    _patch(path, second, "<I", 0x12345678)
    with WeightFile(str(path)) as wf:
        np.testing.assert_array_equal(wf.read(first), np.arange(6, dtype=np.float16))
        with pytest.raises(ModelPackageError, match=rf"no blob at offset {second} \(sentinel 0x12345678"):
            wf.read(second)


def test_offset_that_is_not_a_blob_is_reported(two_blobs):
    path, (first, _) = two_blobs
    with WeightFile(str(path)) as wf, pytest.raises(ModelPackageError, match=rf"no blob at offset {first + 8}"):
        wf.read(first + 8)


@pytest.mark.parametrize("code", [0, 5, 99])
def test_unknown_dtype_code_is_reported(two_blobs, code):
    path, (first, _) = two_blobs
    _patch(path, first + 4, "<I", code)
    with WeightFile(str(path)) as wf:
        with pytest.raises(ModelPackageError, match=rf"offset {first} has unknown dtype code {code}"):
            wf.read(first)


def test_size_field_beyond_the_file_is_reported(two_blobs):
    path, (first, _) = two_blobs
    size = os.path.getsize(path)
    _patch(path, first + 8, "<Q", 2**40)
    with WeightFile(str(path)) as wf, pytest.raises(ModelPackageError, match=rf"{2**40} bytes .*file has {size} bytes"):
        wf.read(first)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ModelPackageError, match="missing or unreadable"):
        WeightFile(str(tmp_path / "nope.bin"))


def test_size_not_a_whole_number_of_elements_is_reported(two_blobs):
    path, (first, _) = two_blobs
    _patch(path, first + 8, "<Q", 11)  # 11 bytes of fp16
    with WeightFile(str(path)) as wf, pytest.raises(ModelPackageError, match=rf"offset {first}"):
        wf.read(first)


def test_sub_byte_blob_shorter_than_its_type_is_reported(two_blobs):
    path, (_, second) = two_blobs
    with WeightFile(str(path)) as wf, pytest.raises(ModelPackageError, match=rf"offset {second}"):
        wf.read(second, 50)  # the program's type says 50 uint4 values; the blob holds 5


def test_truncated_weights_in_a_package_name_the_op(tmp_path):
    """End to end: a package whose weight.bin lost its tail fails at load, naming the const op and offset."""
    torch.manual_seed(0)
    module = torch.nn.Linear(16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = convert_module(module, [torch.randn(1, 16)], precision="fp32")
        package = tmp_path / "linear.mlpackage"
        mlmodel.save(str(package))
    (weight_bin,) = list(package.rglob("weight.bin"))
    with open(weight_bin, "r+b") as f:
        f.truncate(HEADER_BYTES + METADATA_BYTES + 100)  # the first blob's data is cut
    with pytest.raises(ModelPackageError, match=r"'val' of op '(weight|bias)' \(const\): weight file .* is "
                                                r"truncated or corrupt: blob .* offset \d+"):
        load_model(str(package), backend="mil")
