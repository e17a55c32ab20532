"""Op kernels of the portable MIL runtime: one function per MIL op type, grouped by family in this package.

Semantics follow the MIL op definitions in coremltools
(https://apple.github.io/coremltools/source/coremltools.converters.mil.mil.ops.defs.html); each family
module links the relevant section.

The kernel contract, for whoever adds one:

- A kernel is a plain function registered with ``@register("op_type", ...)``. It is called with the op's
  inputs as keyword arguments, under their MIL names; optional inputs that the program omits are absent,
  so give them the MIL default.
- A variable always arrives as a ``torch.Tensor``. Floating tensors are ``torch.float32`` (fp16-typed values
  are carried in fp32 and rounded by the executor after each op), ints keep their width (``int32`` ...),
  booleans are ``torch.bool``.
- A constant of rank 0 arrives as a Python scalar (``int``, ``float``, ``bool`` or ``str``); a constant of
  rank >= 1 as a tensor of the same kinds (strings as a list). Helpers in :mod:`._util` accept both.
- Inputs declared ``variadic`` (``concat(values=...)`` ...) always arrive as a list.
- Return one tensor, or a tuple in the order of the op's outputs. Compute in fp32; never round to fp16
  yourself, and do not worry about the exact integer width: the executor casts every output to its
  declared type.
- Kernels of ``constexpr_*`` ops run once, when the model is loaded.

Optionally, a kernel may also have a *specializer* (``@specializer("op_type")``): ``fn(consts, var_params)``,
called once per step when the executor's fast path compiles its plan, with the step's constant inputs
(``consts``, as the kernel receives them) and the names of its variable inputs. It returns a function taking
only those variable inputs as keywords that computes exactly what the kernel computes (bit for bit; it may call
the kernel itself for cases it does not cover), or None to keep the kernel. This is where constant attributes
(axes, pads, strides, weight layouts) are parsed once instead of on every call. A specializer that raises is
ignored (the kernel runs, and reports a bad constant as it always does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Kernel:
    op_type: str
    fn: Callable
    variadic: frozenset[str]


REGISTRY: dict[str, Kernel] = {}
SPECIALIZERS: dict[str, Callable] = {}


def register(*op_types: str, variadic: tuple[str, ...] = ()):
    def decorate(fn: Callable) -> Callable:
        for op_type in op_types:
            if op_type in REGISTRY:
                raise RuntimeError(f"MIL op {op_type!r} registered twice")
            REGISTRY[op_type] = Kernel(op_type, fn, frozenset(variadic))
        return fn

    return decorate


def specializer(*op_types: str):
    def decorate(fn: Callable) -> Callable:
        for op_type in op_types:
            SPECIALIZERS[op_type] = fn
        return fn

    return decorate


def _load_families() -> None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_families()
