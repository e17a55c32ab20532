"""Kokoro-82M converters: a ``kokoro.KModel`` (recovered weights) in, one fixed-shape ML Program out, through the
project's one export path. Two shapes users ship: the seven-stage chain (at the 5 s bucket's sizes, so a failure
names its stage) and the 5 s / 15 s buckets end to end. Sizes come from :mod:`.modules` (MODELS.md's buckets) and
the model (hidden 512, style 128, ALBERT 768).

Precision, decided by measurement (docs/kokoro.md; real weights, the committed utterances, portable runtime):

- ``noise-source`` computes in fp32 in every package: SineGen's phase (a cumulative sum, x 2 pi x 300) reaches
  ~1e5 rad for the 9th harmonic over 15 s, beyond fp16's largest value (65504), and fp16's spacing is already
  1 rad at 2048 rad. All-fp16, the source's STFT came out at 15.7 dB PSNR against torch.
- ``tail`` (conv_post, exp/sin, inverse STFT) computes in fp32 too: all-fp16 it keeps waveform correlation 0.99998
  but the log-mel PSNR falls from 68-69 dB (fp32 tail) to 44-46 dB; the stage is 0.2% of the model's time.
- The fp16 buckets keep the same ops fp32 (:func:`fp32_region`, found in the program graph); everything else is
  fp16 (the vocoder's norms are written to survive it: :func:`.modules.masked_instance_norm`).
"""

from __future__ import annotations

import torch

from conversions.export import DEFAULT_TARGET, convert_traced

from .modules import (BUCKETS, HARMONICS, STAGE_BUCKET, STYLE_DIM, Albert, Alignment, Bucket, BucketModel,
                      NoiseSource, PostAlbert, Prosody, Tail, Vocoder, har_frames)

ALBERT_HIDDEN = 768
HIDDEN = 512
DURATION_FEATURES = HIDDEN + STYLE_DIM
BUCKET_OUTPUTS = ("audio", "audio_length_samples", "pred_dur")
STFT_BINS = 11  # n_fft 20 -> 11 bins; har = magnitude ++ phase
FEATURE_CHANNELS = 128  # the generator's last resblocks


def _i32(*shape) -> torch.Tensor:
    return torch.ones(*shape, dtype=torch.int32)


def _convert(module, example, outputs, precision, target, component, keep_fp32=None):
    return convert_traced(module, example, outputs, precision=precision, target=target, keep_fp32=keep_fp32,
                          metadata={"component": component})


def _all_ops(block) -> set:
    return set(block.operations)


def stage_examples(bucket: Bucket = STAGE_BUCKET) -> dict[str, dict[str, torch.Tensor]]:
    """Example feeds of each stage at a bucket's sizes (values only shape the trace)."""
    t, f = bucket.tokens, bucket.frames
    ref_s = torch.zeros(1, 2 * STYLE_DIM)
    return {
        "albert": {"input_ids": _i32(1, t), "attention_mask": _i32(1, t)},
        "post-albert": {"input_ids": _i32(1, t), "attention_mask": _i32(1, t),
                        "bert_hidden": torch.zeros(1, t, ALBERT_HIDDEN), "ref_s": ref_s},
        "alignment": {"pred_dur": _i32(1, t), "d": torch.zeros(1, t, DURATION_FEATURES),
                      "t_en": torch.zeros(1, HIDDEN, t)},
        "prosody": {"en": torch.zeros(1, DURATION_FEATURES, f), "frames": _i32(1) * f, "ref_s": ref_s},
        "noise-source": {"f0": torch.full((1, 2 * f), 100.0), "random_phases": torch.zeros(1, HARMONICS)},
        "vocoder": {"asr": torch.zeros(1, HIDDEN, f), "f0": torch.full((1, 2 * f), 100.0), "n": torch.zeros(1, 2 * f),
                    "ref_s": ref_s, "har_magnitude": torch.zeros(1, STFT_BINS, har_frames(f)),
                    "har_phase": torch.zeros(1, STFT_BINS, har_frames(f)), "frames": _i32(1) * f},
        "tail": {"features": torch.zeros(1, FEATURE_CHANNELS, har_frames(f)), "frames": _i32(1) * f},
    }


STAGE_OUTPUTS = {
    "albert": ("bert_hidden",),
    "post-albert": ("duration", "pred_dur", "d", "t_en"),
    "alignment": ("en", "asr", "frames"),
    "prosody": ("f0", "n"),
    "noise-source": ("har_magnitude", "har_phase"),
    "vocoder": ("features",),
    "tail": ("audio",),
}


def stage_module(model, stage: str, bucket: Bucket = STAGE_BUCKET):
    """The torch module of one stage at a bucket's sizes."""
    builders = {"albert": lambda: Albert(model), "post-albert": lambda: PostAlbert(model),
                "alignment": lambda: Alignment(bucket.frames), "prosody": lambda: Prosody(model),
                "noise-source": lambda: NoiseSource(model, bucket.frames), "vocoder": lambda: Vocoder(model),
                "tail": lambda: Tail(model, bucket.frames)}
    return builders[stage]().eval()


def _stage_converter(stage: str, keep_fp32=None):
    def convert(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
        return _convert(stage_module(model, stage), stage_examples()[stage], STAGE_OUTPUTS[stage], precision, target,
                        stage, keep_fp32=keep_fp32)

    convert.__name__ = f"convert_{stage.replace('-', '_')}"
    convert.__doc__ = f"Stage {stage!r} at the {STAGE_BUCKET.name} bucket's sizes: {STAGE_OUTPUTS[stage]}."
    return convert


def fp32_region(block) -> set:
    """The ops an fp16 bucket keeps in fp32: the noise source (every op that only feeds the forward STFT of the
    source, the STFT itself up to the har features) and the tail (the generator's last conv and everything after
    it). Found in the program graph: the source's ops are those whose every consumer is one of them, seeded by
    the STFT convs (weight [11, 1, 20]); the tail starts at the last ``conv`` op."""
    ops = list(block.operations)
    consumers: dict = {op: [] for op in ops}
    for op in ops:
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                producer = getattr(var, "op", None)
                if producer in consumers:
                    consumers[producer].append(op)
    stft = {op for op in ops if op.op_type == "conv" and tuple(op.inputs["weight"].shape) == (STFT_BINS, 1, 20)}
    if len(stft) != 2:
        raise ValueError(f"fp32_region: expected the source STFT's two convs (weight [11, 1, 20]), found {len(stft)}")
    region = set(stft)
    # downstream of the STFT up to (excluding) the noise convs that read the har features
    pending = list(stft)
    while pending:
        for consumer in consumers[pending.pop()]:
            if consumer not in region and consumer.op_type != "conv":
                region.add(consumer)
                pending.append(consumer)
    # upstream: every op whose consumers are all in the region (the source's own computation)
    for op in reversed(ops):
        if op not in region and consumers[op] and all(c in region for c in consumers[op]):
            region.add(op)
    last_conv = max((i for i, op in enumerate(ops) if op.op_type == "conv"), default=None)
    if last_conv is None:
        raise ValueError("fp32_region: the program has no conv op (expected the generator's conv_post)")
    tail = {ops[last_conv]}
    for op in ops[last_conv:]:
        if op in tail:
            tail.update(consumers[op])
    return region | tail


convert_albert = _stage_converter("albert")
convert_post_albert = _stage_converter("post-albert")
convert_alignment = _stage_converter("alignment")
convert_prosody = _stage_converter("prosody")
convert_noise_source = _stage_converter("noise-source", keep_fp32=_all_ops)
convert_vocoder = _stage_converter("vocoder")
convert_tail = _stage_converter("tail", keep_fp32=_all_ops)

STAGE_CONVERTERS = {"albert": convert_albert, "post-albert": convert_post_albert, "alignment": convert_alignment,
                    "prosody": convert_prosody, "noise-source": convert_noise_source, "vocoder": convert_vocoder,
                    "tail": convert_tail}


def bucket_example(bucket: Bucket) -> dict[str, torch.Tensor]:
    return {"input_ids": _i32(1, bucket.tokens), "attention_mask": _i32(1, bucket.tokens),
            "ref_s": torch.zeros(1, 2 * STYLE_DIM), "random_phases": torch.zeros(1, HARMONICS)}


def bucket_module(model, bucket: Bucket, with_duration: bool = False) -> BucketModel:
    return BucketModel(model, bucket, with_duration).eval()


def _bucket_converter(bucket: Bucket):
    def convert(model, precision: str = "fp16", target: str = DEFAULT_TARGET):
        return _convert(bucket_module(model, bucket), bucket_example(bucket), BUCKET_OUTPUTS, precision, target,
                        f"bucket-{bucket.name}", keep_fp32=fp32_region)

    convert.__name__ = f"convert_bucket_{bucket.name}"
    convert.__doc__ = (f"The whole model at {bucket.tokens} tokens / {bucket.frames} frames ({bucket.seconds:.2f} s): "
                       f"{BUCKET_OUTPUTS}.")
    return convert


BUCKET_CONVERTERS = {b.name: _bucket_converter(b) for b in BUCKETS}
