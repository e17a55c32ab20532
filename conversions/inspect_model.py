"""What is inside a Core ML model: I/O, deployment target, precision, op histogram, weights, compression.

Shared by ``python -m conversions inspect`` and the reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .runtime.mil.program import SUBBYTE_BITS, Function, TensorType

# Core ML specification version -> the first OS release that runs it (coremltools' ``_SPECIFICATION_VERSION_*``).
SPEC_VERSION_TARGETS = {4: "iOS13", 5: "iOS14", 6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}
COMPRESSION_OPS = frozenset({
    "constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_sparse_to_dense", "constexpr_cast",
    "constexpr_blockwise_shift_scale", "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale",
})
DTYPE_BITS = {"fp16": 16, "fp32": 32, "fp64": 64, "bf16": 16, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16,
              "int32": 32, "uint32": 32, "int64": 64, "uint64": 64, "bool": 8, **SUBBYTE_BITS}


@dataclass
class ModelSummary:
    source: str
    deployment_target: str
    specification_version: int
    opset: str
    precision: str
    inputs: list
    outputs: list
    op_histogram: dict[str, int]
    weight_file_bytes: int
    constant_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    compression_ops: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"model: {self.source}",
               f"deployment target: {self.deployment_target} (specification version {self.specification_version}, "
               f"opset {self.opset})",
               f"precision: {self.precision}", "inputs:"]
        out += [f"  {s}" for s in self.inputs]
        out.append("outputs:")
        out += [f"  {s}" for s in self.outputs]
        out.append(f"ops ({sum(self.op_histogram.values())}):")
        out += [f"  {count:6d}  {op}" for op, count in self.op_histogram.items()]
        out.append(f"weight file: {self.weight_file_bytes} bytes")
        out.append("constants by dtype: " + ", ".join(f"{k} {v} bytes" for k, v in self.constant_bytes_by_dtype.items()))
        comp = ", ".join(f"{k} x{v}" for k, v in self.compression_ops.items()) or "none"
        out.append(f"compression ops: {comp}")
        return out


def program_precision(function: Function) -> str:
    """``fp16`` if every float value computed by the program is fp16, ``fp32`` if none is, else ``mixed``."""
    fp16 = fp32 = 0
    for op in function.operations:
        if op.op_type == "const" or op.op_type in COMPRESSION_OPS:
            continue
        for out in op.outputs:
            if isinstance(out.type, TensorType):
                fp16 += out.type.dtype == "fp16"
                fp32 += out.type.dtype == "fp32"
    if fp16 and not fp32:
        return "fp16"
    if fp32 and not fp16:
        return "fp32"
    if not fp16 and not fp32:
        return "none"
    # Casts of fp32 model inputs/outputs to and from fp16 are part of an fp16 program.
    casts = sum(1 for op in function.operations if op.op_type == "cast"
                for o in op.outputs if isinstance(o.type, TensorType) and o.type.dtype == "fp32")
    return "fp16" if fp32 <= casts else "mixed"


def summarize(model) -> ModelSummary:
    """Summary of a model loaded with the portable runtime (``load_model(..., backend="mil")``)."""
    fn = model.function
    spec_version = model.spec.specificationVersion
    by_dtype: dict[str, int] = {}
    for op in fn.operations:
        if op.op_type == "const" or op.op_type in COMPRESSION_OPS:
            for bindings in op.inputs.values():
                for b in bindings:
                    if isinstance(b.value, np.ndarray) and b.value.dtype != object:
                        # the declared element width, not numpy's container width (sub-byte types)
                        dtype = b.type.dtype if isinstance(b.type, TensorType) else b.value.dtype.name
                        nbytes = int(np.ceil(b.value.size * DTYPE_BITS.get(dtype, b.value.itemsize * 8) / 8))
                        by_dtype[dtype] = by_dtype.get(dtype, 0) + nbytes
    weight_bytes = 0
    source = model.source
    if os.path.isdir(source):
        for root, _, files in os.walk(os.path.join(source, "Data")):
            for f in files:
                if f.endswith(".bin"):
                    weight_bytes += os.path.getsize(os.path.join(root, f))
    histogram = model.op_histogram()
    compression = {op: n for op, n in histogram.items() if op in COMPRESSION_OPS}
    return ModelSummary(
        source=source,
        deployment_target=SPEC_VERSION_TARGETS.get(spec_version, f"spec {spec_version}"),
        specification_version=spec_version,
        opset=fn.opset,
        precision=program_precision(fn),
        inputs=[str(s) for s in model.inputs],
        outputs=[str(s) for s in model.outputs],
        op_histogram=histogram,
        weight_file_bytes=weight_bytes,
        constant_bytes_by_dtype=dict(sorted(by_dtype.items())),
        compression_ops=compression,
    )
