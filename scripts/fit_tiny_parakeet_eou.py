"""Regenerate the offline tiny Parakeet EOU model's committed data, ``conversions/models/parakeet_eou/tiny/``.

Builds the random model of ``config_for(TINY_SCALE)`` (seed 0) with its ``<EOU>``/``<EOB>`` SentencePiece tokenizer,
fits it (``fit_to_clip``: ``FIT_STEPS`` Adam steps, the clip streamed in the 160 / 320 / 1280 ms chunks in turn) to
say the committed clip's two sentences each followed by ``<EOU>``, then checks, for every chunk variant, that NeMo's
own streaming greedy decoding (``streaming.nemo_stream``) gives exactly that text and that the host decoder on the
torch components agrees token for token and chunk for chunk, with the smallest top-2 logit margin along its path.
Only then it writes (each file atomically, the manifest last): ``tokenizer.model``, ``tokenizer.vocab``,
``vocab.txt``, ``weights.npz`` and ``manifest.json`` (sha256 of each, fit settings, versions, CPU capability, the
transcripts, ``<EOU>`` chunks and margins).

**A regeneration changes every Parakeet EOU snapshot baseline** (fitting is not bit-reproducible across CPUs):
regenerate on purpose, commit the five files together and re-pin (``pytest -k eou --snapshot-update``).

Usage: ``python scripts/fit_tiny_parakeet_eou.py [--out DIR] [--dry-run]`` (~40 s on two cores).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conversions.audio import load_speech_clip  # noqa: E402
from conversions.models.parakeet_eou import nemo_models as nm  # noqa: E402
from conversions.models.parakeet_eou import streaming  # noqa: E402
from conversions.models.parakeet_eou.modules import CHUNK_FRAMES, dims  # noqa: E402

MIN_MARGIN = 1.0  # refuse a fit whose decisions along any variant's streamed path are closer than this


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=nm.TINY_DIR, help="directory to write (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="fit and check, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clip = load_speech_clip()
    model = nm.build_tiny_parakeet_eou(seed=0)
    try:
        nm.fit_to_clip(model, clip)
        expected = [int(t) for text, _, _ in nm.UTTERANCES for t in model.tokenizer.text_to_ids(text) + [nm.eou_id(model)]]
        eou = dims(model).eou_id
        info = {"variants": {}}
        problems = []
        for variant in CHUNK_FRAMES:
            theirs = streaming.nemo_stream(model, variant, clip)
            ours = streaming.run_pipeline(model, variant, streaming.torch_pipeline(model, variant), clip)
            text = model.tokenizer.ids_to_text(theirs.tokens)
            print(f"{variant}: NeMo {text!r}, <EOU> at chunks {theirs.eou_chunks(eou)}, host decoder agrees: "
                  f"{(ours.tokens, ours.chunks) == (theirs.tokens, theirs.chunks)}, min margin {ours.min_margin:.3f}")
            if theirs.tokens != expected:
                problems.append(f"{variant}: NeMo's streamed transcript is {text!r}, not the fitted text")
            if (ours.tokens, ours.chunks) != (theirs.tokens, theirs.chunks):
                problems.append(f"{variant}: the host decoder on torch components differs from NeMo")
            if not ours.min_margin > MIN_MARGIN:
                problems.append(f"{variant}: smallest top-2 margin {ours.min_margin:.3f} <= {MIN_MARGIN}")
            info["variants"][variant] = {"transcript": text, "eou_chunks": theirs.eou_chunks(eou),
                                         "min_margin": round(ours.min_margin, 4)}
        offline = model.tokenizer.ids_to_text(streaming.nemo_offline(model, clip))
        print(f"offline: {offline!r}")
        info["offline_transcript"] = offline
        if problems:
            print("refusing to write:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        if args.dry_run:
            return 0
        from conversions.export import weights_digest

        info["weights_digest"] = weights_digest(model)
        manifest = nm.write_tiny_files(model, model._tokenizer_tmpdir, args.out, info)
        print(f"wrote {args.out} (weights sha256 {manifest['files'][nm.WEIGHTS_FILE][:16]}...)")
        return 0
    finally:
        shutil.rmtree(model._tokenizer_tmpdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
