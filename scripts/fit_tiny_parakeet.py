"""Regenerate the offline tiny Parakeet TDT model's committed data, ``conversions/models/parakeet_tdt/tiny/``.

The offline default model of the Parakeet suite is assembled from these files (``nemo_models.build_committed_tiny``)
instead of being fitted on each machine, because fitting is not reproducible across CPUs (torch's AVX512, AVX2 and
default kernels round differently and 80 Adam steps carry that into every weight). This script is the one place
that fits: it builds the random model of ``config_for(TINY_SCALE)`` with seed 0 and trains its SentencePiece
tokenizer (``build_tiny_parakeet_tdt``), fits it for ``FIT_STEPS`` Adam steps to say ``FIT_TEXT`` on the committed
clip (``tests/data/speech_noise_16k.wav``, ``fit_to_utterance``), prints NeMo's greedy transcript of the clip and
the smallest top-2 logit margins along NeMo's greedy path, and then writes, each atomically:

- ``tokenizer.model``, ``tokenizer.vocab``, ``vocab.txt``: the tokenizer directory NeMo's ``bpe`` tokenizer reads;
- ``weights.npz``: every entry of ``model.state_dict()`` (batch-norm statistics and ``num_batches_tracked``
  included; float32, int64 counters) in ``np.savez``'s format with fixed timestamps (same weights, same bytes);
- ``manifest.json`` (last): the sha256 of each file, the scale, seed, fit text/steps/lr, torch and NeMo versions,
  the CPU capability it was fitted under (``torch.backends.cpu.get_cpu_capability()``), the weights digest
  (``conversions.export.weights_digest``), the transcript and the margins.

It refuses to write anything if the transcript is not ``FIT_TEXT`` or NeMo's path differs from the one the margins
were measured on.

**A regeneration changes every Parakeet snapshot baseline**: the weights are fitted with the kernels of the machine
that runs this script, so even an unchanged script produces different weights on another CPU (or another torch).
Regenerate only on purpose (e.g. a new NeMo version whose modules no longer take the state dict), commit the
five files together, and re-pin the Parakeet baselines (``pytest -k parakeet --snapshot-update``) in the same
change. The test ``tests/test_parakeet_tiny_model.py`` checks the files against the manifest.

Usage: ``python scripts/fit_tiny_parakeet.py [--out DIR] [--dry-run]`` (~15 s on two cores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversions.models.parakeet_tdt import nemo_models as nm  # noqa: E402

WINDOW_SAMPLES = 15 * 16000  # the suite's fixed window: the clip is zero-padded to 15 s with its true length


def _greedy_tdt_decode():
    try:
        from conversions.models.parakeet_tdt.tdt import greedy_tdt_decode
    except ImportError:  # the module's older home
        from conversions.stt.tdt import greedy_tdt_decode
    return greedy_tdt_decode


def greedy_report(model, audio: np.ndarray) -> dict:
    """NeMo's own greedy TDT decoding of ``audio`` zero-padded to 15 s (its forward with the true length, then its
    configured ``decoding``), and the top-2 logit margins (token part, duration part) at every joint step of the
    same greedy path, walked with NeMo's decoder and joint by ``tdt.greedy_tdt_decode``."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    samples = min(audio.shape[0], WINDOW_SAMPLES)
    padded = np.zeros((1, WINDOW_SAMPLES), np.float32)
    padded[0, :samples] = audio[:samples]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the suite runs torch
    try:
        with torch.no_grad():
            enc, enc_len = model.forward(input_signal=torch.from_numpy(padded),
                                         input_signal_length=torch.tensor([samples]))
            (hyp,) = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                                    return_hypotheses=True)
            tokens = [int(t) for t in hyp.y_sequence]

            def decoder_step(token, state):
                g, state = model.decoder.predict(y=torch.tensor([[token]]), state=state, add_sos=False, batch_size=1)
                return g, state

            def joint_step(frame, g):
                return model.joint.joint(torch.from_numpy(frame).transpose(1, 2), g).numpy()

            walk = _greedy_tdt_decode()(enc.numpy(), int(enc_len[0]), decoder_step, joint_step, None,
                                        blank_id=int(model.decoder.blank_idx),
                                        durations=[int(d) for d in model.cfg.decoding.durations],
                                        max_symbols_per_frame=int(model.cfg.decoding.greedy.max_symbols))
    finally:
        torch.set_num_threads(threads)
    return {"transcript": model.tokenizer.ids_to_text(tokens), "tokens": tokens, "path_tokens": walk.tokens,
            "steps": walk.steps, "min_token_margin": min(walk.margins, default=float("inf")),
            "min_duration_margin": min(walk.duration_margins, default=float("inf"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=nm.TINY_DIR, help="directory to write (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    args = parser.parse_args(argv)

    from conversions.export import weights_digest

    clip = nm._fit_clip()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"fitting: seed 0, scale {nm.TINY_SCALE}, {nm.FIT_STEPS} Adam steps at lr {nm.FIT_LR} to say "
          f"{nm.FIT_TEXT!r} (torch {torch.__version__}, CPU capability {capability})")
    model = nm.build_tiny_parakeet_tdt(seed=0, scale=nm.TINY_SCALE, fit_audio=clip)
    try:
        report = greedy_report(model, clip)
        digest = weights_digest(model)
        print(f"transcript: {report['transcript']!r} ({len(report['tokens'])} tokens, {report['steps']} joint steps)")
        print(f"min top-2 margin along NeMo's greedy path: token {report['min_token_margin']:.4f}, "
              f"duration {report['min_duration_margin']:.4f}")
        print(f"weights digest: {digest}")
        if report["transcript"] != nm.FIT_TEXT:
            print(f"refusing to write: the transcript is not FIT_TEXT {nm.FIT_TEXT!r}", file=sys.stderr)
            return 1
        if report["path_tokens"] != report["tokens"]:
            print(f"refusing to write: the margins' path {report['path_tokens']} is not NeMo's {report['tokens']}",
                  file=sys.stderr)
            return 1
        if args.dry_run:
            print("--dry-run: nothing written")
            return 0
        info = {"weights_digest": digest, "transcript": report["transcript"],
                "min_token_margin": round(report["min_token_margin"], 4),
                "min_duration_margin": round(report["min_duration_margin"], 4)}
        manifest = nm.write_tiny_files(model, model._tokenizer_tmpdir, args.out, info)
    finally:
        shutil.rmtree(model._tokenizer_tmpdir, ignore_errors=True)

    rebuilt = nm.build_committed_tiny(args.out)  # read back: the files make the model that was fitted
    try:
        if weights_digest(rebuilt) != digest:
            print(f"error: the model built from {args.out} has weights digest {weights_digest(rebuilt)}, not {digest}",
                  file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(rebuilt._tokenizer_tmpdir, ignore_errors=True)
    for name, sha in manifest["files"].items():
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes, sha256 {sha[:16]}...)")
    print(f"wrote {args.out / nm.MANIFEST_FILE}; every Parakeet snapshot baseline now needs re-pinning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
