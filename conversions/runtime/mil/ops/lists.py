"""Tensor lists: ``make_list``, ``list_length``, ``list_read``, ``list_write``, ``list_gather``, ``list_scatter``.

Semantics: coremltools' iOS15 ``control_flow`` definitions
(https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html#module-coremltools.converters.mil.mil.ops.defs.iOS15.control_flow).

A list is a value like any other: every write returns a new list and leaves the one it was given unchanged, so a
list still referenced elsewhere (an earlier loop iteration's, the other branch's) never sees a later write. The
common patterns -- filling a list slot by slot, appending in a loop -- update the storage in place, in O(1): a
write is made in place only by the newest list of its storage, and only into a slot that no list of that storage
has written yet; any other write copies the slots it can see first.

Elements are stored as the op that wrote them produced them (already rounded to fp16 when typed fp16; the
executor rounds again what ``list_read`` / ``list_gather`` return, per their declared types). Reading an index
outside ``[0, length)`` or an element never written, and writing past the end of a fixed-length list, raise an
error naming the index and the length.
"""

from __future__ import annotations

from typing import Any

import torch

from . import register
from ._util import TORCH_DTYPES, ints, scalar

_NEVER = float("inf")  # written_at of a slot no list has written


class _Storage:
    __slots__ = ("items", "written_at", "newest")

    def __init__(self, items: list, written_at: list, newest: int):
        self.items = items
        self.written_at = written_at  # slot -> version of the list that wrote it
        self.newest = newest  # the newest version made from this storage


class TensorList:
    """A MIL list value: ``length`` slots of tensors sharing one dtype and shape (see the module docstring)."""

    __slots__ = ("_storage", "_version", "length", "dynamic", "dtype", "elem_shape")

    def __init__(self, storage: _Storage, version: int, length: int, dynamic: bool, dtype: str,
                 elem_shape: tuple[int | None, ...] | None):
        self._storage = storage
        self._version = version
        self.length = length
        self.dynamic = dynamic
        self.dtype = dtype  # MIL element type name: fp16, fp32, int32, bool
        self.elem_shape = elem_shape  # None: unknown rank; None dims: fixed by the first write

    @classmethod
    def empty(cls, length: int, dynamic: bool, dtype: str, elem_shape) -> TensorList:
        return cls(_Storage([None] * length, [_NEVER] * length, 0), 0, length, dynamic, dtype, elem_shape)

    def __repr__(self) -> str:
        dims = "?" if self.elem_shape is None else ", ".join("?" if d is None else str(d) for d in self.elem_shape)
        return (f"TensorList({self.dtype}[{dims}], length={self.length}, "
                f"{'dynamic' if self.dynamic else 'fixed'}, written={sum(map(self._visible, range(self.length)))})")

    def _visible(self, i: int) -> bool:
        return self._storage.written_at[i] <= self._version

    def read(self, index: int, what: str) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"{what} {index} is out of range for a list of length {self.length}")
        if not self._visible(index):
            raise IndexError(f"{what} {index}: element {index} of the list (length {self.length}) was never written")
        return self._storage.items[index]

    def write(self, index: int, value: torch.Tensor, what: str) -> TensorList:
        if index < 0 or (index >= self.length and not self.dynamic):
            raise IndexError(f"{what} {index} is out of range for a fixed-length list of length {self.length}"
                             if index >= 0 else f"{what} {index} is negative (list length {self.length})")
        value = self._checked(value, what)
        elem_shape = self.elem_shape
        if elem_shape is None or None in elem_shape:  # the first write fixes the element shape
            elem_shape = tuple(value.shape)
        storage, version = self._storage, self._version
        in_place = (storage.newest == version
                    and (index >= len(storage.items) or storage.written_at[index] == _NEVER))
        if not in_place:  # copy what this list sees into a storage of its own
            visible = [self._visible(i) for i in range(self.length)]
            storage = _Storage([item if seen else None for item, seen in zip(storage.items, visible)],
                               [0 if seen else _NEVER for seen in visible], 0)
            version = 0
        length = max(self.length, index + 1)
        if len(storage.items) < length:
            grow = length - len(storage.items)
            storage.items.extend([None] * grow)
            storage.written_at.extend([_NEVER] * grow)
        version += 1
        storage.items[index] = value
        storage.written_at[index] = version
        storage.newest = version
        return TensorList(storage, version, length, self.dynamic, self.dtype, elem_shape)

    def _checked(self, value: Any, what: str) -> torch.Tensor:
        value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        dtype = TORCH_DTYPES.get(self.dtype)
        if dtype is not None and value.dtype != dtype:
            value = value.to(dtype)
        shape = tuple(value.shape)
        expected = self.elem_shape
        if expected is not None and (len(shape) != len(expected)
                                     or any(e is not None and e != s for e, s in zip(expected, shape))):
            dims = ", ".join("?" if d is None else str(d) for d in expected)
            raise ValueError(f"{what}: value of shape {list(shape)} does not match the list's element shape [{dims}]")
        return value


def _index(value: Any) -> int:
    return int(scalar(value))


def _list(ls: Any, param: str = "ls") -> TensorList:
    if not isinstance(ls, TensorList):
        raise TypeError(f"input {param!r} must be a list (made by make_list), got {type(ls).__name__}")
    return ls


@register("make_list", variadic=("elem_shape",))
def make_list(elem_shape, init_length=1, dynamic_length=True, dtype="fp32"):
    shape: list[int | None] = []
    for dim in elem_shape:
        if isinstance(dim, str):
            shape.append(None)  # symbolic: fixed by the first write
        else:
            shape.extend(ints(dim))
    length = _index(init_length)
    if length < 0:
        raise ValueError(f"init_length must be >= 0, got {length}")
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not a MIL element type")
    return TensorList.empty(length, bool(scalar(dynamic_length)), dtype, tuple(shape))


@register("list_length")
def list_length(ls):
    return torch.tensor(_list(ls).length, dtype=torch.int32)


@register("list_read")
def list_read(ls, index):
    return _list(ls).read(_index(index), "index")


@register("list_write")
def list_write(ls, index, value):
    return _list(ls).write(_index(index), value, "index")


@register("list_gather")
def list_gather(ls, indices):
    ls = _list(ls)
    positions = ints(indices)
    if not positions:
        if ls.elem_shape is None or None in ls.elem_shape:
            raise ValueError("gathering no element from a list whose element shape is not known yet")
        return torch.zeros((0, *ls.elem_shape), dtype=TORCH_DTYPES[ls.dtype])
    return torch.stack([ls.read(i, f"indices[{k}] =") for k, i in enumerate(positions)])


@register("list_scatter")
def list_scatter(ls, indices, value):
    ls = _list(ls)
    positions = ints(indices)
    value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if value.dim() == 0 or value.shape[0] != len(positions):
        raise ValueError(f"input 'value' of shape {list(value.shape)} must have one row per index "
                         f"({len(positions)} indices)")
    for k, i in enumerate(positions):
        ls = ls.write(i, value[k], f"indices[{k}] =")
    return ls
