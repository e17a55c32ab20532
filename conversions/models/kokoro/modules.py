"""Kokoro-82M as torch modules that trace to fixed-shape Core ML programs: the stage chain and the 5 s / 15 s buckets.

Every module reuses ``kokoro.KModel``'s own submodules and weights; only the glue that does not convert, or that
makes the two sides see different values, is re-expressed here (each trap named where it is handled):

- ``pack_padded_sequence`` BiLSTMs -> :func:`masked_bilstm`: the forward direction over the whole fixed length
  (padding comes after the valid steps, so it never reaches them) and the backward direction over each sequence
  reversed *within its length* (a gather), so valid steps see exactly what the packed LSTM sees. Tokens: exact
  against kokoro on padded inputs (durations equal ``KModel.forward_with_tokens`` on the unpadded ids).
- ``repeat_interleave`` + index assignment (durations -> alignment) -> :func:`alignment_from_durations`
  (cumsum and comparisons at the bucket's fixed frame count).
- SineGen's ``torch.rand`` (initial phases of harmonics 1..8) -> the input ``random_phases`` [1, 9] (harmonic 0
  is forced to phase 0, as kokoro does); its ``torch.randn_like`` noise -> a fixed seeded Gaussian table
  (:data:`NOISE_SEED`), a constant of the program: both sides see identical values, and the converted model stays
  deterministic as shipped models are.
- SineGen's float ``(f0 / sr) % 1``: coremltools 9.0 converts it to ``floor_div`` and its ``noop_elimination``
  pass then deletes it (``x - x = 0``; canary: tests/runtime/test_model_blocks.py) -> ``x - floor(x)``.
- ``AdainResBlk1d``'s ``torch.rsqrt(torch.tensor(2))`` is an int64 tensor that reaches MIL ``rsqrt`` as int32 ->
  a float constant 1/sqrt(2).
- ALBERT's 2-D mask is expanded by transformers through ``Tensor.new_ones`` (not convertible) -> a prepared 4-D
  boolean mask.
- Complex STFT (kokoro's default ``TorchSTFT``: ``torch.stft``/``torch.istft``) -> :class:`RealStft`, the same
  transform exactly with real convolutions (kokoro's own ``CustomSTFT`` is an approximation, see there), and the
  phase of the DC and Nyquist bins by comparison (Core ML's atan2 returns 0 for (0, negative), torch pi).

Frames beyond the utterance (a 2 s utterance in the 5 s bucket) are computed, as the shipped bucket models do:
instance norms in the prosody predictor and vocoder then see them (the upstream pipeline check measures what that
costs against kokoro on the unpadded utterance). ``audio`` is zero beyond ``audio_length_samples``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 600  # generator upsampling 10 x 6, iSTFT hop 5, and the decoder's 2x: 2 * 300
STYLE_DIM = 128  # ref_s [1, 256] = timbre (decoder) ++ prosody (predictor)
HARMONICS = 9  # SineGen: fundamental + 8 overtones
NOISE_SEED = 20_260_000


@dataclass(frozen=True)
class Bucket:
    """A fixed-shape model size users ship: ``tokens`` input ids (BOS/EOS pads included) and ``frames`` predicted
    frames of 600 samples (MODELS.md: 5 s = 124 tokens, 293 frames; 15 s = 249 tokens, 621 frames)."""

    name: str
    tokens: int
    frames: int

    @property
    def samples(self) -> int:
        return self.frames * SAMPLES_PER_FRAME

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE


def har_frames(frames: int) -> int:
    """STFT frames of the source and of the generator's output for ``frames`` predicted frames (hop 5, centred):
    120 F + 1."""
    return frames * SAMPLES_PER_FRAME // 5 + 1


BUCKET_5S = Bucket("5s", 124, 293)
BUCKET_15S = Bucket("15s", 249, 621)
BUCKETS = (BUCKET_5S, BUCKET_15S)
STAGE_BUCKET = BUCKET_5S  # the stage chain is exported at the 5 s bucket's sizes


def albert_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B,T] 0/1 padding mask -> the prepared [B,1,1,T] boolean mask (True = attend) transformers passes on."""
    return attention_mask.to(torch.bool)[:, None, None, :]


def _direction(lstm: nn.LSTM, suffix: str) -> nn.LSTM:
    """One direction of a 1-layer bidirectional ``nn.LSTM`` as a unidirectional one with the same weights."""
    single = nn.LSTM(lstm.input_size, lstm.hidden_size, 1, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(single, name).copy_(getattr(lstm, name + suffix))
    return single.eval()


class MaskedBiLSTM(nn.Module):
    """kokoro's ``pack_padded_sequence`` BiLSTM at a fixed length: exact on the valid steps, zero beyond them."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if not (lstm.bidirectional and lstm.num_layers == 1 and lstm.batch_first):
            raise ValueError(f"expected a 1-layer batch-first bidirectional LSTM, got {lstm}")
        self.forward_lstm = _direction(lstm, "")
        self.backward_lstm = _direction(lstm, "_reverse")

    def forward(self, x: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """``x`` [1, T, C], ``length`` [1] int (valid steps) -> [1, T, 2H]."""
        steps = x.shape[1]
        t = torch.arange(steps).view(1, steps)
        valid = t < length.view(-1, 1)
        # reverse within the valid length: step t reads step length-1-t; padding maps onto itself
        order = torch.where(valid, length.view(-1, 1) - 1 - t, t).unsqueeze(-1).to(torch.int64)
        forward_out, _ = self.forward_lstm(x)
        reversed_in = torch.gather(x, 1, order.expand(-1, -1, x.shape[2]))
        backward_out, _ = self.backward_lstm(reversed_in)
        backward_out = torch.gather(backward_out, 1, order.expand(-1, -1, backward_out.shape[2]))
        return torch.cat([forward_out, backward_out], dim=-1) * valid.unsqueeze(-1).to(x.dtype)


def frame_mask(frames: torch.Tensor, length: int, per_frame: int, extra: int = 0) -> torch.Tensor:
    """[1, 1, length] 1.0 on the first ``frames * per_frame + extra`` steps (a rate of ``per_frame`` steps per
    predicted frame, ``extra`` (0 or 1) step more, the centred STFT's last frame), 0.0 beyond.

    Built from the per-frame mask (frame indices up to 621) repeated ``per_frame`` times, not from a step index:
    coremltools makes an ``arange`` a float constant, and fp16 represents integers exactly only up to 2048
    (measured: the 120 F + 1 mask wrong in the fp16 vocoder)."""
    n_frames = (length - extra) // per_frame
    if n_frames * per_frame + extra != length or extra not in (0, 1):
        raise ValueError(f"frame_mask: {length} steps are not {per_frame} per frame plus 0 or 1")
    per = (torch.arange(n_frames).view(1, 1, n_frames) < frames.view(-1, 1, 1)).to(torch.float32)
    mask = per.unsqueeze(-1).expand(-1, -1, -1, per_frame).reshape(1, 1, n_frames * per_frame)
    if extra:
        mask = torch.maximum(F.pad(mask, (0, 1)), F.pad(mask, (1, 0)))
    return mask


def masked_instance_norm(norm: nn.InstanceNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``InstanceNorm1d`` with its statistics over the valid steps only (what kokoro computes on the unpadded
    utterance), written so that an fp16 program neither overflows nor underflows: means, not sums (74,521 steps
    at 15 s), and the variance of the deviations divided by their largest magnitude (squares of features of a
    few hundred exceed fp16's 65504: measured on the vocoder, max |x| 540). The value is the same function:
    var = scale^2 mean((c / scale)^2), so (c / scale) / sqrt(mean((c / scale)^2) + eps / scale^2). The scale is
    at least 1: coremltools turns ``eps / scale^2`` into MIL ``inverse`` with its default epsilon 1e-4, an error
    of 1e-4 relative on a term of at most 1e-5 then (measured with a floor of 0.01: errors of 52 in that term)."""
    share = mask.mean(dim=-1, keepdim=True)
    mean = (x * mask).mean(dim=-1, keepdim=True) / share
    centred = x - mean
    scale = torch.clamp((centred * mask).abs().amax(dim=-1, keepdim=True), min=1.0)
    scaled = centred / scale
    var = ((scaled * mask) ** 2).mean(dim=-1, keepdim=True) / share
    y = scaled / torch.sqrt(var + norm.eps / scale ** 2)
    if norm.affine:
        y = y * norm.weight.view(1, -1, 1) + norm.bias.view(1, -1, 1)
    return y


def adain(module, x, s, mask):
    """``AdaIN1d`` with :func:`masked_instance_norm`."""
    h = module.fc(s).unsqueeze(-1)
    gamma, beta = torch.chunk(h, chunks=2, dim=1)
    return (1 + gamma) * masked_instance_norm(module.norm, x, mask) + beta


def adain_res_blk(block, x, s, mask=None):
    """``AdainResBlk1d.forward``: with ``mask`` (x's valid steps), its norms over the valid steps and zeros fed to
    every convolution beyond them (kokoro's zero padding at the utterance's end); without, kokoro's own block.
    Either way the 1/sqrt(2) is a float constant (kokoro's ``torch.rsqrt(torch.tensor(2))`` is an int64 tensor
    that reaches MIL ``rsqrt`` as int32)."""
    if mask is None:
        return (block._residual(x, s) + block._shortcut(x)) * (1.0 / math.sqrt(2.0))
    upsampled = block.upsample_type != "none"
    out_mask = F.interpolate(mask, scale_factor=2, mode="nearest") if upsampled else mask
    y = block.actv(adain(block.norm1, x, s, mask)) * mask
    y = block.pool(y) * out_mask if upsampled else y
    y = block.actv(adain(block.norm2, block.conv1(y), s, out_mask)) * out_mask
    y = block.conv2(y)
    return (y + block._shortcut(x)) * (1.0 / math.sqrt(2.0))


def snake(x, alpha):
    """Snake1D, ``x + sin(alpha x)^2 / alpha``: kokoro writes ``(1 / alpha) * ...``, which coremltools converts to
    MIL ``inverse`` with its default epsilon (1 / (alpha + 1e-4)); a division stays exact."""
    return x + torch.sin(alpha * x) ** 2 / alpha


def adain_resblock1(block, x, s, mask):
    """kokoro's ``AdaINResBlock1`` (the generator's dilated res blocks) with :func:`adain` and :func:`snake`,
    zeros fed to every convolution beyond the valid steps."""
    for c1, c2, n1, n2, a1, a2 in zip(block.convs1, block.convs2, block.adain1, block.adain2, block.alpha1,
                                      block.alpha2):
        y = c1(snake(adain(n1, x, s, mask), a1) * mask)
        y = c2(snake(adain(n2, y, s, mask), a2) * mask)
        x = y + x
    return x


def alignment_from_durations(pred_dur: torch.Tensor, frames: int) -> torch.Tensor:
    """[1,T] integer durations -> [1,T,frames] 0/1 alignment, token t covering frames [cumsum_{t-1}, cumsum_t),
    cut at ``frames``: the in-graph replacement of kokoro's ``repeat_interleave`` + index assignment."""
    ends = torch.cumsum(pred_dur, dim=-1)
    starts = ends - pred_dur
    frame = torch.arange(frames).view(1, 1, frames)
    return ((frame >= starts.unsqueeze(-1)) & (frame < ends.unsqueeze(-1))).to(torch.float32)


def _lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.to(torch.int32).sum(dim=-1)


# ---- the stages ------------------------------------------------------------------------------------------------
class Albert(nn.Module):
    """Stage 1, ``CustomAlbert`` (PL-BERT): (input_ids, attention_mask) -> bert_hidden [1,T,768]."""

    def __init__(self, model):
        super().__init__()
        self.bert = model.bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids, attention_mask=albert_mask(attention_mask))


class PostAlbert(nn.Module):
    """Stage 2, durations: bert_encoder, the duration encoder (3 x BiLSTM + AdaLayerNorm on the prosody style), the
    duration LSTM and projection, and the text encoder (embedding, 3 weight-norm convs, BiLSTM).

    (input_ids, attention_mask, bert_hidden, ref_s) -> duration [1,T] (float, before rounding: its distance to the
    next .5 says whether numerical error can flip a frame), pred_dur [1,T] int32 (0 on padding, >= 1 on tokens),
    d [1,T,640], t_en [1,512,T]."""

    def __init__(self, model):
        super().__init__()
        self.bert_encoder = model.bert_encoder
        predictor = model.predictor
        self.duration_blocks = nn.ModuleList(
            MaskedBiLSTM(b) if isinstance(b, nn.LSTM) else b for b in predictor.text_encoder.lstms)
        self.duration_lstm = MaskedBiLSTM(predictor.lstm)
        self.duration_proj = predictor.duration_proj
        te = model.text_encoder
        self.embedding, self.cnn, self.text_lstm = te.embedding, te.cnn, MaskedBiLSTM(te.lstm)

    def durations(self, bert_hidden, attention_mask, style):
        length = _lengths(attention_mask)
        keep = attention_mask.to(torch.float32).unsqueeze(-1)  # [1,T,1]
        d_en = self.bert_encoder(bert_hidden)  # [1,T,512]
        s = style.unsqueeze(1).expand(-1, int(d_en.shape[1]), -1)  # int(): fixed sizes baked into the trace
        x = torch.cat([d_en, s], dim=-1) * keep
        for block in self.duration_blocks:
            if isinstance(block, MaskedBiLSTM):
                x = block(x, length)
            else:  # AdaLayerNorm over channels, then the style appended again
                x = block(x, style)  # [1,T,C] in and out
                x = torch.cat([x, s], dim=-1) * keep
        d = x
        duration = torch.sigmoid(self.duration_proj(self.duration_lstm(d, length))).sum(dim=-1)
        pred_dur = torch.clamp(torch.round(duration), min=1.0) * keep.squeeze(-1)
        return duration, pred_dur.to(torch.int32), d

    def text_features(self, input_ids, attention_mask):
        keep = attention_mask.to(torch.float32).unsqueeze(1)  # [1,1,T]
        x = self.embedding(input_ids).transpose(1, 2) * keep
        for block in self.cnn:
            x = block(x) * keep
        x = self.text_lstm(x.transpose(1, 2), _lengths(attention_mask)).transpose(1, 2)
        return x * keep

    def forward(self, input_ids, attention_mask, bert_hidden, ref_s):
        duration, pred_dur, d = self.durations(bert_hidden, attention_mask, ref_s[:, STYLE_DIM:])
        return duration, pred_dur, d, self.text_features(input_ids, attention_mask)


class Alignment(nn.Module):
    """Stage 3: integer durations -> frame features. (pred_dur [1,T] int32, d [1,T,640], t_en [1,512,T]) ->
    en [1,640,F], asr [1,512,F], frames [1] int32 (valid frames, cut at F)."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, pred_dur, d, t_en):
        aln = alignment_from_durations(pred_dur, self.frames)
        frames = torch.clamp(pred_dur.sum(dim=-1), max=self.frames).to(torch.int32)
        return d.transpose(-1, -2) @ aln, t_en @ aln, frames


class Prosody(nn.Module):
    """Stage 4, ``ProsodyPredictor.F0Ntrain``: (en [1,640,F], frames [1] int32, ref_s) -> F0 [1,2F], N [1,2F] (the
    shared BiLSTM masked to the valid frames, the AdaIN res blocks with their statistics over them; zero beyond)."""

    def __init__(self, model):
        super().__init__()
        predictor = model.predictor
        self.shared = MaskedBiLSTM(predictor.shared)
        self.f0_blocks, self.n_blocks = predictor.F0, predictor.N
        self.f0_proj, self.n_proj = predictor.F0_proj, predictor.N_proj

    def forward(self, en, frames, ref_s):
        s = ref_s[:, STYLE_DIM:]
        steps = en.shape[-1]
        x = self.shared(en.transpose(-1, -2), frames).transpose(-1, -2)
        outputs = []
        for blocks, proj in ((self.f0_blocks, self.f0_proj), (self.n_blocks, self.n_proj)):
            y, mask = x, frame_mask(frames, steps, 1)
            for block in blocks:
                y = adain_res_blk(block, y, s, mask)
                if block.upsample_type != "none":
                    mask = frame_mask(frames, 2 * steps, 2)
            outputs.append((proj(y) * mask).squeeze(1))
        return outputs[0], outputs[1]


class RealStft(nn.Module):
    """kokoro's default (complex) STFT and inverse — ``TorchSTFT``: ``torch.stft`` / ``torch.istft``, Hann window,
    centred with reflect padding — computed with real convolutions only, exactly.

    kokoro's own real-valued path (``CustomSTFT``, ``disable_complex=True``) is not the same transform: replicate
    padding, and an inverse without the one-sided doubling or the window-envelope normalisation (measured: 0.93
    correlation with ``torch.istft`` on the same spectrogram). Here the forward bases are ``w[n] cos(2 pi k n/N)``
    and ``-w[n] sin(2 pi k n/N)`` (exactly zero for the DC and Nyquist bins, which have no imaginary part); the
    phase of those two bins is pi where their real part is negative, else 0 — what ``torch.angle`` gives, and not
    what Core ML's atan2 gives for (0, negative), which is 0. The inverse is the one-sided inverse DFT (bins 1..N/2-1
    doubled, the imaginary parts of DC and Nyquist ignored), windowed, overlap-added by a transposed convolution,
    divided by the window's squared overlap-add envelope, and trimmed by N/2 at both ends."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        bins = n_fft // 2 + 1
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64).view(-1, 1)
        n = torch.arange(n_fft, dtype=torch.float64).view(1, -1)
        angle = 2 * math.pi * k * n / n_fft
        sin = torch.sin(angle)
        sin[0] = sin[-1] = 0.0  # DC and Nyquist: sin(0) and sin(pi n), exactly 0
        real_bins = torch.zeros(bins, dtype=torch.float64)
        real_bins[0] = real_bins[-1] = 1.0
        self.register_buffer("forward_real", (torch.cos(angle) * window).float().unsqueeze(1), persistent=False)
        self.register_buffer("forward_imag", (-sin * window).float().unsqueeze(1), persistent=False)
        self.register_buffer("real_bins", real_bins.float().view(1, -1, 1), persistent=False)
        scale = (2.0 - real_bins).view(-1, 1) / n_fft
        self.register_buffer("inverse_real", (scale * torch.cos(angle) * window).float().unsqueeze(1), persistent=False)
        self.register_buffer("inverse_imag", (-scale * sin * window).float().unsqueeze(1), persistent=False)
        self.register_buffer("window_squared", (window ** 2).float().view(1, 1, -1), persistent=False)

    def transform(self, waveform):
        """[1, samples] -> magnitude, phase [1, N/2+1, frames]."""
        pad = self.n_fft // 2
        x = F.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect")
        real = F.conv1d(x, self.forward_real, stride=self.hop)
        imag = F.conv1d(x, self.forward_imag, stride=self.hop)
        magnitude = torch.sqrt(real ** 2 + imag ** 2)
        negative = (real < 0).to(real.dtype) * torch.pi
        phase = torch.atan2(imag, real) * (1.0 - self.real_bins) + negative * self.real_bins
        return magnitude, phase

    def inverse(self, magnitude, phase, frame_mask=None):
        """magnitude, phase [1, N/2+1, frames] -> [1, hop * (frames - 1)]; ``frame_mask`` [1, 1, frames] (1.0 on the
        valid frames): the window envelope is the valid frames' (torch.istft on those frames alone)."""
        if frame_mask is None:
            frame_mask = torch.ones_like(magnitude[:, :1])
        magnitude = magnitude * frame_mask
        real = F.conv_transpose1d(magnitude * torch.cos(phase), self.inverse_real, stride=self.hop)
        imag = F.conv_transpose1d(magnitude * torch.sin(phase), self.inverse_imag, stride=self.hop)
        envelope = F.conv_transpose1d(frame_mask, self.window_squared, stride=self.hop)
        envelope = torch.where(envelope > 1e-11, envelope, torch.ones_like(envelope))
        pad = self.n_fft // 2
        return ((real + imag) / envelope)[:, 0, pad: real.shape[-1] - pad]


class NoiseSource(nn.Module):
    """Stage 5, the harmonic-plus-noise source (``SourceModuleHnNSF``) and its STFT: (F0 [1,2F], random_phases
    [1,9]) -> har_magnitude, har_phase [1,11,120F+1] (:class:`RealStft` of the source; the generator reads
    them concatenated as ``har``).

    SineGen's phase is a cumulative sum reaching ~1e5 rad over 15 s for the top harmonic (beyond fp16's range,
    and its spacing is ~1 rad long before): this stage computes in fp32 in every package (measured: converters.py).
    """

    def __init__(self, model, frames: int):
        super().__init__()
        gen = model.decoder.generator
        self.f0_upsamp, self.source = gen.f0_upsamp, gen.m_source
        self.stft = RealStft(gen.post_n_fft, gen.stft.hop_length)
        sine = gen.m_source.l_sin_gen
        self.sampling_rate, self.upsample_scale = float(sine.sampling_rate), int(sine.upsample_scale)
        self.sine_amp, self.noise_std, self.voiced_threshold = sine.sine_amp, sine.noise_std, sine.voiced_threshold
        self.register_buffer("harmonics", torch.arange(1, HARMONICS + 1, dtype=torch.float32).view(1, 1, -1),
                             persistent=False)
        phase_mask = torch.ones(1, HARMONICS)
        phase_mask[0, 0] = 0.0  # kokoro: no initial phase noise on the fundamental
        self.register_buffer("phase_mask", phase_mask, persistent=False)
        self.register_buffer("noise", source_noise(frames), persistent=False)
        # F.interpolate(linear, align_corners=False, x300) from 2F frames to 600F samples: sample t reads frame
        # k = floor(p) and k + 1 with weight alpha = p - k, p = max((t + 0.5) / 300 - 0.5, 0); k + 1 past the
        # last frame contributes nothing
        samples, f0_frames = frames * SAMPLES_PER_FRAME, 2 * frames
        position = ((torch.arange(samples, dtype=torch.float64) + 0.5) / self.upsample_scale - 0.5).clamp(min=0)
        frame = position.floor().to(torch.int64)
        has_next = frame + 1 < f0_frames
        self.register_buffer("frame_of_sample", frame, persistent=False)
        self.register_buffer("next_frame_of_sample", torch.where(has_next, frame + 1, frame), persistent=False)
        self.register_buffer("alpha_of_sample", ((position - frame) * has_next).to(torch.float32), persistent=False)

    def sine_source(self, f0_curve, random_phases):
        f0 = self.f0_upsamp(f0_curve[:, None]).transpose(1, 2)  # [1, 600F, 1]
        rad = f0 * self.harmonics / self.sampling_rate
        rad = rad - torch.floor(rad)  # kokoro's `% 1` (coremltools 9.0 turns float `x % 1` into x - x)
        rad = torch.cat([rad[:, :1, :] + (random_phases * self.phase_mask).unsqueeze(1), rad[:, 1:, :]], dim=1)
        rad = F.interpolate(rad.transpose(1, 2), scale_factor=1 / self.upsample_scale, mode="linear")  # [1,9,2F]
        sines = torch.sin(2 * torch.pi * self.wrapped_phase(rad * self.upsample_scale)).transpose(1, 2) * self.sine_amp
        uv = (f0 > self.voiced_threshold).to(torch.float32)
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        sine_waves = sines * uv + noise_amp * self.noise
        return self.source.l_tanh(self.source.l_linear(sine_waves))  # [1, 600F, 1]

    def wrapped_phase(self, increments):
        """kokoro's ``interpolate(cumsum(rad) * 300, x300, linear)`` in cycles, modulo 1.

        ``increments`` [1,9,2F]: cycles per F0 frame (up to ~60). kokoro accumulates them unwrapped, reaching
        ~1e4 cycles over 15 s for the 9th harmonic, where fp32's spacing is ~1e-3 cycles: two correct fp32
        implementations then disagree by ~1e-2 rad (measured: torch vs the fp32 program, har magnitude error
        1.8e-3). Wrapped, every value stays below ~60 cycles: the cumulative sum runs over the fractional parts
        and is wrapped again, and the linear upsampling adds ``alpha * increment`` to the wrapped start of each
        frame (the same value modulo 1, since sin(2 pi x) has period 1)."""
        fractions = increments - torch.floor(increments)
        start = torch.cumsum(fractions, dim=-1)
        start = start - torch.floor(start)
        at = torch.index_select(start, 2, self.frame_of_sample)
        step = torch.index_select(increments, 2, self.next_frame_of_sample) * self.alpha_of_sample
        return at + step

    def forward(self, f0_curve, random_phases):
        har_source = self.sine_source(f0_curve, random_phases).transpose(1, 2).squeeze(1)
        return self.stft.transform(har_source)


def source_noise(frames: int) -> torch.Tensor:
    """SineGen's Gaussian noise for ``frames`` frames [1, 600 frames, 9]: a fixed table from :data:`NOISE_SEED`,
    prefix-consistent (a shorter bucket reads the first rows of a longer one's)."""
    g = torch.Generator().manual_seed(NOISE_SEED)
    table = torch.randn(1, BUCKET_15S.samples, HARMONICS, generator=g)
    if frames * SAMPLES_PER_FRAME > table.shape[1]:
        raise ValueError(f"source noise: {frames} frames exceed the table's {BUCKET_15S.frames}")
    return table[:, : frames * SAMPLES_PER_FRAME].contiguous()


class Vocoder(nn.Module):
    """Stage 6, the decoder up to its last convolution: F0/N convs, AdaIN res blocks, the iSTFTNet generator's
    upsampling and resblocks mixed with the source, every norm over the valid frames and zeros fed to every
    convolution beyond them. (asr [1,512,F], F0 [1,2F], N [1,2F], ref_s, har_magnitude, har_phase [1,11,120F+1],
    frames [1] int32) -> features [1,128,120F+1] (before ``conv_post``)."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, asr, f0_curve, n, ref_s, har_magnitude, har_phase, frames):
        dec, s = self.decoder, ref_s[:, :STYLE_DIM]
        steps = asr.shape[-1]
        mask = frame_mask(frames, steps, 1)
        f0 = dec.F0_conv(f0_curve.unsqueeze(1)) * mask
        n = dec.N_conv(n.unsqueeze(1)) * mask
        x = adain_res_blk(dec.encode, torch.cat([asr, f0, n], dim=1), s, mask)
        asr_res = dec.asr_res(asr)
        res = True
        for block in dec.decode:
            if res:
                x = torch.cat([x, asr_res, f0, n], dim=1)
            x = adain_res_blk(block, x, s, mask)
            if block.upsample_type != "none":
                res = False
                mask = frame_mask(frames, 2 * steps, 2)
        gen = dec.generator
        har_mask = frame_mask(frames, har_frames(steps), har_frames(1) - 1, extra=1)
        har = torch.cat([har_magnitude, har_phase], dim=1) * har_mask
        rate = 2
        for i in range(gen.num_upsamples):
            x = F.leaky_relu(x, negative_slope=0.1) * mask
            rate *= gen.ups[i].stride[0]
            last = i == gen.num_upsamples - 1
            mask = har_mask if last else frame_mask(frames, steps * rate, rate)
            x_source = adain_resblock1(gen.noise_res[i], gen.noise_convs[i](har), s, mask)
            x = gen.ups[i](x)
            if last:
                x = gen.reflection_pad(x)
            x = x + x_source
            xs = None
            for j in range(gen.num_kernels):
                y = adain_resblock1(gen.resblocks[i * gen.num_kernels + j], x, s, mask)
                xs = y if xs is None else xs + y
            x = xs / gen.num_kernels
        return x


class Tail(nn.Module):
    """Stage 7: ``conv_post``, exp (magnitude) / sin (phase), inverse STFT (:class:`RealStft`) over the valid
    frames. (features [1,128,120F+1], frames [1] int32) -> audio [1, 600F], zero beyond 600 x frames."""

    def __init__(self, model, frames: int):
        super().__init__()
        self.generator = model.decoder.generator
        self.samples = frames * SAMPLES_PER_FRAME
        self.stft = RealStft(self.generator.post_n_fft, self.generator.stft.hop_length)

    def forward(self, features, frames):
        gen = self.generator
        mask = frame_mask(frames, features.shape[-1], har_frames(1) - 1, extra=1)
        x = gen.conv_post(F.leaky_relu(features) * mask)
        spec = torch.exp(x[:, : gen.post_n_fft // 2 + 1, :])
        phase = torch.sin(x[:, gen.post_n_fft // 2 + 1:, :])
        audio = self.stft.inverse(spec, phase, mask)
        return audio * frame_mask(frames, self.samples, SAMPLES_PER_FRAME).view(1, -1)


class BucketModel(nn.Module):
    """The whole model at one bucket's fixed shapes, the stages in order: (input_ids [1,T] int32, attention_mask
    [1,T] int32, ref_s [1,256], random_phases [1,9]) -> audio [1, 600F], audio_length_samples [1] int32,
    pred_dur [1,T] int32 (and, ``with_duration``, the raw durations [1,T] before rounding)."""

    def __init__(self, model, bucket: Bucket, with_duration: bool = False):
        super().__init__()
        self.bucket, self.with_duration = bucket, with_duration
        self.albert, self.post_albert = Albert(model), PostAlbert(model)
        self.alignment, self.prosody = Alignment(bucket.frames), Prosody(model)
        self.noise_source, self.vocoder = NoiseSource(model, bucket.frames), Vocoder(model)
        self.tail = Tail(model, bucket.frames)

    def forward(self, input_ids, attention_mask, ref_s, random_phases):
        bert_hidden = self.albert(input_ids, attention_mask)
        duration, pred_dur, d, t_en = self.post_albert(input_ids, attention_mask, bert_hidden, ref_s)
        en, asr, frames = self.alignment(pred_dur, d, t_en)
        f0, n = self.prosody(en, frames, ref_s)
        har_magnitude, har_phase = self.noise_source(f0, random_phases)
        audio = self.tail(self.vocoder(asr, f0, n, ref_s, har_magnitude, har_phase, frames), frames)
        if self.with_duration:  # the torch reference's extra: how far each duration is from rounding otherwise
            return audio, frames * SAMPLES_PER_FRAME, pred_dur, duration
        return audio, frames * SAMPLES_PER_FRAME, pred_dur
