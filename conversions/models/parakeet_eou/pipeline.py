"""The end-to-end check of Parakeet EOU: the clip streamed chunk by chunk through the converted preprocessor,
streaming encoder (caches carried), decoder step and single-step joint+decision, decoded by the host streaming
greedy decoder, must give NeMo's own streaming result token for token, each token in the same chunk, ``<EOU>``
included. One check per chunk variant."""

from __future__ import annotations

from conversions.models.parakeet_tdt.pipeline import first_difference

from .bounds import DECISION_MARGIN
from .modules import chunk_variants, dims
from .streaming import nemo_offline, nemo_stream, package_pipeline, run_pipeline, torch_pipeline


def pipeline_components(variant: str) -> tuple[str, ...]:
    return ("preprocessor", f"encoder-{variant}", "decoder", "joint-decision-step")


def stream_check(variant: str):
    def run(model, clip, components):
        from conversions.registry import PipelineResult, PlotSeries

        d = dims(model)
        theirs = nemo_stream(model, variant, clip)
        reference = run_pipeline(model, variant, torch_pipeline(model, variant), clip)
        if components is None:
            result, label = reference, "torch components"
        else:
            result = run_pipeline(model, variant, package_pipeline(
                model, variant, *(components[n] for n in pipeline_components(variant))), clip)
            label = "converted components"
        text = model.tokenizer.ids_to_text(result.tokens)
        offline = nemo_offline(model, clip)
        figures = {"nemo_tokens": len(theirs.tokens), "tokens": len(result.tokens), "text": text,
                   "eou_chunks": result.eou_chunks(d.eou_id), "nemo_eou_chunks": theirs.eou_chunks(d.eou_id),
                   "chunk_ms": round(chunk_variants(model)[variant].audio_ms),
                   "reference_min_margin": float(reference.min_margin),
                   "offline_text": model.tokenizer.ids_to_text(offline),
                   "streamed_equals_offline": theirs.tokens == offline}
        problems = []
        if not theirs.tokens:
            problems.append("NeMo's streaming decoded nothing on the clip: the default model is fitted to speak on it")
        if d.eou_id is not None and not theirs.eou_chunks(d.eou_id):
            problems.append("NeMo's streaming emitted no <EOU> on the clip (it has two utterances)")
        if (result.tokens, result.chunks) != (theirs.tokens, theirs.chunks):
            i = first_difference(list(zip(result.tokens, result.chunks)), list(zip(theirs.tokens, theirs.chunks)))
            lines = [f"{label}: the streamed transcript differs from NeMo's streaming ({variant} chunks)",
                     f"  NeMo ({len(theirs.tokens)} tokens): {model.tokenizer.ids_to_text(theirs.tokens)!r}, <EOU> "
                     f"at chunks {theirs.eou_chunks(d.eou_id)}",
                     f"  ours ({len(result.tokens)} tokens): {text!r}, <EOU> at chunks {result.eou_chunks(d.eou_id)}"]
            if i is not None:
                nemo_pairs = list(zip(theirs.tokens, theirs.chunks))[i:i + 3]
                our_pairs = list(zip(result.tokens, result.chunks))[i:i + 3]
                lines.append(f"  first difference at token {i}: NeMo (token, chunk) {nemo_pairs} vs ours {our_pairs}")
                if components is not None and i < len(reference.token_margins):
                    lines.append(f"  torch reference margin at that token: {reference.token_margins[i]:.3g} "
                                 f"(decisions above {DECISION_MARGIN:g} must not flip)")
            problems.append("\n".join(lines))
        if components is None and not reference.min_margin > DECISION_MARGIN:
            problems.append(f"the torch decisions along the streamed greedy path have a top-2 margin of only "
                            f"{reference.min_margin:.3g} (<= {DECISION_MARGIN:g}): an exact transcript would test luck")
        chunks = max(theirs.chunk_count, result.chunk_count)
        series = PlotSeries(
            {"<EOU> emitted": _per_chunk(theirs, chunks, d.eou_id), "tokens emitted": _per_chunk(theirs, chunks)},
            {"<EOU> emitted": _per_chunk(result, chunks, d.eou_id), "tokens emitted": _per_chunk(result, chunks)},
            step_ms=chunk_variants(model)[variant].audio_ms, ylabel="count per chunk", reference_label="NeMo streaming")
        if theirs.chunk_count != result.chunk_count:
            problems.append(f"{label}: streamed {result.chunk_count} chunks, NeMo's buffer {theirs.chunk_count}")
        summary = (f"{variant}: {len(result.tokens)} tokens {text!r}, <EOU> at chunks {result.eou_chunks(d.eou_id)} vs "
                   f"NeMo's {len(theirs.tokens)} / {theirs.eou_chunks(d.eou_id)}")
        return PipelineResult(not problems, summary, figures, "\n".join(problems) or None, series)

    return run


def _per_chunk(result, chunks: int, token: int | None = None) -> list[float]:
    """How many tokens (or only ``token``) each chunk emitted."""
    counts = [0.0] * chunks
    for t, c in zip(result.tokens, result.chunks):
        if token is None or t == token:
            counts[c] += 1.0
    return counts
