"""Portable MIL runtime vs torch eager on the same module and input: prints figures, asserts nothing.

    python benchmarks/bench_runtime.py [--repeat 30] [--blocks 2] [--only tiny|silero|conformer]

Workloads:
- ``tiny-op-chain``: the runtime's fixed cost per op. A MIL program of 200 tiny elementwise ops (add, mul, relu
  in turn on a [1, 16] tensor) and an "empty" one of the same shape with ~0 ops, each converted with fp16 and
  fp32 compute precision; per-op us = (median call of the chain - median call of the empty program) / the
  difference in op count (the slope: what one more op costs, the call's fixed cost left out);
- ``silero-unified-36ms`` / ``silero-unified-256ms``: one streaming call of the Silero VAD v6 unified models
  as the suite exports them (``conversions.models.silero_vad.converters``: 576 samples or 8 chunks of 512, plus
  the LSTM state), the tiny-op regime where per-op overhead dominates (goal: runtime at most 1.5x torch eager);
- ``fastconformer-stack``: FastConformer-style blocks at d_model 1024 over 15 s of encoder frames (188),
  the matmul/conv-heavy regime (goal: at most 1.0x torch eager).
Each model is converted once per precision (fp16 and fp32 compute precision); the runtime runs the fp16 program
with fp16 storage emulated and the fp32 program in fp32. Times are medians of warm calls, torch eager measured
in the same run; load time is reported apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # before coremltools imports tqdm: no progress bars in the table

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conversions.runtime import load_model  # noqa: E402
from conversions.testing import convert_module  # noqa: E402


class FeedForward(torch.nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d_model)
        self.up = torch.nn.Linear(d_model, 4 * d_model)
        self.down = torch.nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.up(self.norm(x))))


class ConformerBlock(torch.nn.Module):
    """Macaron FFN, multi-head self-attention, convolution module (GLU, depthwise k=9, batch norm), FFN."""

    def __init__(self, d_model: int = 1024, heads: int = 8, kernel: int = 9):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.scale = self.head_dim ** -0.5
        self.ff1, self.ff2 = FeedForward(d_model), FeedForward(d_model)
        self.attn_norm = torch.nn.LayerNorm(d_model)
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.out = torch.nn.Linear(d_model, d_model)
        self.conv_norm = torch.nn.LayerNorm(d_model)
        self.pointwise1 = torch.nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise = torch.nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.batch_norm = torch.nn.BatchNorm1d(d_model)
        self.pointwise2 = torch.nn.Conv1d(d_model, d_model, 1)
        self.final_norm = torch.nn.LayerNorm(d_model)

    def forward(self, x):  # x: [B, T, D]
        x = x + 0.5 * self.ff1(x)
        q, k, v = self.qkv(self.attn_norm(x)).chunk(3, dim=-1)
        q, k, v = (z.reshape(1, -1, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        attn = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(1, -1, self.heads * self.head_dim)
        x = x + self.out(attn)
        c = self.pointwise1(self.conv_norm(x).transpose(1, 2))
        c = torch.nn.functional.glu(c, dim=1)
        c = torch.nn.functional.silu(self.batch_norm(self.depthwise(c)))
        x = x + self.pointwise2(c).transpose(1, 2)
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)


class ConformerStack(torch.nn.Module):
    def __init__(self, blocks: int, d_model: int = 1024):
        super().__init__()
        self.blocks = torch.nn.ModuleList(ConformerBlock(d_model) for _ in range(blocks))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def median_seconds(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def silero_workload(window: str):
    """The suite's unified model (36 ms or 256 ms), its converter, and a call's inputs (audio + LSTM state)."""
    from conversions.models.silero_vad import converters as cv
    from conversions.models.silero_vad import modules as silero

    model = silero.build_clean_model().eval()
    module, convert, samples = {
        "36ms": (model, cv.convert_unified_36ms, silero.WINDOW),
        "256ms": (silero.SileroVAD256(model).eval(), cv.convert_unified_256ms, silero.WINDOW_256MS),
    }[window]
    torch.manual_seed(0)
    example = [0.1 * torch.randn(1, samples), 0.1 * torch.randn(1, silero.STATE), 0.1 * torch.randn(1, silero.STATE)]
    return module, example, list(silero.INPUT_NAMES), lambda precision: convert(model, precision=precision)


def tiny_chain_program(n_ops: int, precision: str):
    """A converted ML Program of ``n_ops`` tiny elementwise ops (add y, mul y, relu in turn) on [1, 16]: two
    variable inputs so that no pass folds or fuses the chain."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16)), mb.TensorSpec(shape=(1, 16))],
                opset_version=ct.target.iOS17)
    def prog(x, y):
        for i in range(n_ops):
            x = (mb.add(x=x, y=y), mb.mul(x=x, y=y), mb.relu(x=x))[i % 3]
        return mb.identity(x=x) if n_ops == 0 else x

    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                      compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                      skip_model_load=True)


def bench_tiny_ops(n_ops: int, repeat: int) -> list[tuple]:
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 16)).astype(np.float32),
             "y": rng.uniform(0.5, 1.0, (1, 16)).astype(np.float32)}
    rows = []
    for precision in ("fp16", "fp32"):
        timed = []
        for n in (0, n_ops):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = load_model(tiny_chain_program(n, precision), backend="mil", precision=precision)
            steps = len(model.executor.steps)
            timed.append((steps, median_seconds(lambda m=model: m.predict(feeds), repeat * 10, warmup=20)))
        (n0, t0), (n1, t1) = timed
        per_op = (t1 - t0) / (n1 - n0)
        rows.append((f"tiny-op-chain ({n1} steps, [1,16])", f"mil {precision} program", t1, float("nan"), float("nan"),
                     f"per op {per_op * 1e6:.2f} us; empty ({n0} steps) {t0 * 1e6:.1f} us"))
    return rows


def conformer_workload(blocks: int):
    torch.manual_seed(0)
    module = ConformerStack(blocks).eval()
    return module, [torch.randn(1, 188, 1024)], ["encoder_input"]


def bench(name: str, module, example, names, repeat: int, convert=None) -> list[tuple]:
    """torch eager vs the runtime on the same module and inputs. ``convert(precision) -> MLModel``; by default
    ``conversions.testing.convert_module``."""
    if convert is None:
        def convert(precision):
            return convert_module(module, example, names=names, precision=precision)
    rows = []
    feeds = {n: x.numpy() for n, x in zip(names, example)}
    models = {}
    for precision in ("fp16", "fp32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlmodel = convert(precision)
        start = time.perf_counter()
        models[precision] = load_model(mlmodel, backend="mil", precision=precision)
        models[precision, "load"] = time.perf_counter() - start
    with torch.no_grad():
        torch_s = median_seconds(lambda: module(*example), repeat)
    rows.append((name, "torch eager fp32", torch_s, 1.0, float("nan"), ""))
    for precision in ("fp16", "fp32"):
        run_s = median_seconds(lambda m=models[precision]: m.predict(feeds), repeat)
        rows.append((name, f"mil {precision} program", run_s, run_s / torch_s, models[precision, "load"],
                     f"{len(models[precision].executor.steps)} steps"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=2, help="FastConformer-style blocks at d_model 1024")
    parser.add_argument("--ops", type=int, default=200, help="ops of the tiny-op chain")
    parser.add_argument("--only", choices=["tiny", "silero", "conformer"], default=None)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    rows = []
    if args.only in (None, "tiny"):
        rows += bench_tiny_ops(args.ops, repeat=args.repeat)
    if args.only in (None, "silero"):
        for window in ("36ms", "256ms"):
            module, example, names, convert = silero_workload(window)
            rows += bench(f"silero-unified-{window}", module, example, names, repeat=args.repeat * 3, convert=convert)
    if args.only in (None, "conformer"):
        rows += bench(f"fastconformer-stack ({args.blocks} blocks, d1024, 188 frames)",
                      *conformer_workload(args.blocks), repeat=max(5, args.repeat // 3))
    print(f"{'workload':50s} {'engine':20s} {'median ms':>10s} {'vs torch':>9s} {'load s':>7s}  notes")
    for name, engine, seconds, ratio, load_s, notes in rows:
        load = "" if np.isnan(load_s) else f"{load_s:7.2f}"
        vs = "" if np.isnan(ratio) else f"{ratio:8.2f}x"
        print(f"{name:50s} {engine:20s} {seconds * 1e3:10.3f} {vs:>9s} {load:>7s}  {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
