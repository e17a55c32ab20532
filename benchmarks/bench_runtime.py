"""Portable MIL runtime vs torch eager on the same module and input: prints figures, asserts nothing.

    python benchmarks/bench_runtime.py [--repeat 30] [--blocks 2]

Two workloads:
- ``silero-unified-chunk``: one streaming call of the Silero VAD v6 model (576 samples + LSTM state), the
  tiny-op regime where per-op overhead dominates (goal: runtime at most 3x torch eager);
- ``fastconformer-stack``: FastConformer-style blocks at d_model 1024 over 15 s of encoder frames (188),
  the matmul/conv-heavy regime (goal: at most 1.3x torch eager).
Each is converted once (fp16 and fp32 compute precision); the runtime runs the fp16 program with fp16 storage
emulated and the fp32 program in fp32. Times are medians of warm calls; load time is reported apart.
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


def silero_workload():
    from conversions.models.silero_vad import modules as silero

    module = silero.build_clean_model().eval()
    torch.manual_seed(0)
    example = [0.1 * torch.randn(1, silero.WINDOW), torch.zeros(1, silero.STATE), torch.zeros(1, silero.STATE)]
    return module, example, list(silero.INPUT_NAMES)


def conformer_workload(blocks: int):
    torch.manual_seed(0)
    module = ConformerStack(blocks).eval()
    return module, [torch.randn(1, 188, 1024)], ["encoder_input"]


def bench(name: str, module, example, names, repeat: int) -> list[tuple]:
    rows = []
    with torch.no_grad():
        torch_s = median_seconds(lambda: module(*example), repeat)
    rows.append((name, "torch eager fp32", torch_s, 1.0, float("nan")))
    feeds = {n: x.numpy() for n, x in zip(names, example)}
    for precision in ("fp16", "fp32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlmodel = convert_module(module, example, names=names, precision=precision)
        start = time.perf_counter()
        model = load_model(mlmodel, backend="mil", precision=precision)
        load_s = time.perf_counter() - start
        run_s = median_seconds(lambda m=model: m.predict(feeds), repeat)
        rows.append((name, f"mil {precision} program", run_s, run_s / torch_s, load_s))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=2, help="FastConformer-style blocks at d_model 1024")
    parser.add_argument("--only", choices=["silero", "conformer"], default=None)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    rows = []
    if args.only in (None, "silero"):
        rows += bench("silero-unified-chunk", *silero_workload(), repeat=args.repeat)
    if args.only in (None, "conformer"):
        rows += bench(f"fastconformer-stack ({args.blocks} blocks, d1024, 188 frames)",
                      *conformer_workload(args.blocks), repeat=max(5, args.repeat // 3))
    print(f"{'workload':50s} {'engine':20s} {'median ms':>10s} {'vs torch':>9s} {'load s':>7s}")
    for name, engine, seconds, ratio, load_s in rows:
        load = "" if np.isnan(load_s) else f"{load_s:7.2f}"
        print(f"{name:50s} {engine:20s} {seconds * 1e3:10.3f} {ratio:8.2f}x {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
