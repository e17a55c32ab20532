"""The host-side greedy TDT decoder (``conversions/models/parakeet_tdt/tdt.py``).

Three kinds of evidence:

- hand-worked scenarios: a scripted joint returns the (token, duration) written in a table for each
  (frame, tokens emitted so far), and the expected tokens, frames, durations, joint and decoder calls are written
  out by hand from NeMo's rules (the module docstring lists them);
- malformed input gets a ``ValueError`` naming the argument;
- NeMo's own greedy TDT decoding (``greedy_batch`` and ``greedy``) of the same encoder output, on the tiny random
  Parakeet model and real audio: ours, driven by the torch decoder and joint, must give the same tokens, frames
  and durations. The tiny model's joint always predicts a non-blank token with duration 3, which exercises none
  of the corners, so the comparison is also made with a "scrambled" joint (its output layer replaced, see
  :func:`scrambled_joint`) under which blanks, blanks of duration 0, every duration, forced advances and jumps
  past the end all occur.
"""

from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import pytest

from conversions.models.parakeet_tdt.tdt import TDTResult, greedy_tdt_decode

DATA = Path(__file__).parent / "data"
MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "models"


# ---- a scripted decoder and joint -----------------------------------------------------------------------------
# Vocabulary of 4 tokens (0..3), blank = 4. Durations [0, 1, 3]: index 2 means 3 frames, so a result holding 2
# where 3 is expected would show an index taken for a value.
V = 4
BLANK = V
DURATIONS = [0, 1, 3]
NUM_LOGITS = V + 1 + len(DURATIONS)


class Scripted:
    """``decoder_step`` and ``joint_step`` for hand-worked scenarios.

    The encoder output carries the frame index in channel 0. The decoder state is the tuple of token ids fed to
    the decoder so far; its output carries the number of tokens emitted (ids fed after the start symbol). The
    joint looks up ``script[(frame, emitted)] = (token, duration value, margin)`` and returns logits in which that
    token leads the runner-up by ``margin``; a (frame, emitted) pair the script lacks fails the test, which is how
    "the joint is never evaluated there" and "the decoder is not advanced on blank" are checked."""

    def __init__(self, script: dict[tuple[int, int], tuple[int, int, float]], dtype=np.float32):
        self.script = script
        self.dtype = dtype
        self.decoder_calls: list[tuple[int, tuple]] = []  # (token fed, state received)
        self.joint_calls: list[tuple[int, int]] = []  # (frame, emitted)

    def decoder_step(self, token: int, state: tuple):
        self.decoder_calls.append((token, state))
        new_state = state + (token,)
        return np.full((1, 2, 1), len(new_state) - 1, np.float32), new_state

    def joint_step(self, enc: np.ndarray, dec: np.ndarray) -> np.ndarray:
        assert enc.shape == (1, 2, 1) and dec.shape == (1, 2, 1)
        frame, emitted = int(enc[0, 0, 0]), int(dec[0, 0, 0])
        self.joint_calls.append((frame, emitted))
        assert (frame, emitted) in self.script, f"joint evaluated at frame {frame} after {emitted} tokens"
        token, duration, margin = self.script[(frame, emitted)]
        logits = np.zeros(NUM_LOGITS, np.float64)
        logits[token] = 5.0
        logits[(token + 1) % (V + 1)] = 5.0 - margin  # the runner-up
        logits[V + 1 + DURATIONS.index(duration)] = 2.0
        return logits.reshape(1, 1, 1, NUM_LOGITS).astype(self.dtype)


def encoder_frames(num_frames: int) -> np.ndarray:
    enc = np.zeros((1, 2, num_frames), np.float32)
    enc[0, 0] = np.arange(num_frames)
    enc[0, 1] = -1.0
    return enc


def run(script, num_frames, length=None, max_symbols=10, dtype=np.float32) -> tuple[TDTResult, Scripted]:
    fake = Scripted(script, dtype)
    result = greedy_tdt_decode(encoder_frames(num_frames), num_frames if length is None else length,
                               fake.decoder_step, fake.joint_step, (), blank_id=BLANK, durations=DURATIONS,
                               max_symbols_per_frame=max_symbols)
    return result, fake


# ---- hand-worked scenarios ------------------------------------------------------------------------------------
def test_blank_duration_zero_advances_one_frame_and_durations_skip_frames():
    script = {
        (0, 0): (BLANK, 0, 1.0),  # blank predicted with duration 0: read as 1 -> frame 1
        (1, 0): (2, 0, 0.5),  # token 2, duration 0: emitted at frame 1, stay on frame 1
        (1, 1): (0, 1, 0.25),  # token 0, duration 1 -> frame 2
        (2, 2): (BLANK, 3, 2.0),  # blank, duration 3 -> frame 5 (frames 3 and 4 never evaluated)
        (5, 2): (3, 3, 0.75),  # token 3 at frame 5, duration 3 jumps to 8, past T = 6: kept, then the end
    }
    result, fake = run(script, num_frames=6)
    assert result.tokens == [2, 0, 3]
    assert result.frames == [1, 1, 5]
    assert result.durations == [0, 1, 3]
    assert result.token_steps == [1, 2, 4]
    assert result.steps == 5
    assert fake.joint_calls == [(0, 0), (1, 0), (1, 1), (2, 2), (5, 2)]
    assert result.step_frames == [0, 1, 1, 2, 5]
    assert result.step_tokens == [BLANK, 2, 0, BLANK, 3]
    assert result.step_durations == [0, 0, 1, 3, 3]  # as predicted: the blank's 0 is not rewritten
    assert result.margins == pytest.approx([1.0, 0.5, 0.25, 2.0, 0.75])
    assert result.duration_margins == pytest.approx([2.0] * 5)
    assert result.min_margin == pytest.approx(0.25)
    # the decoder: the start symbol (blank) from the initial state, then each emitted token, nothing on blanks;
    # the token after the last one still advances it (as NeMo's batched decoder does)
    assert [tok for tok, _ in fake.decoder_calls] == [BLANK, 2, 0, 3]
    assert [state for _, state in fake.decoder_calls] == [(), (BLANK,), (BLANK, 2), (BLANK, 2, 0)]
    assert result.decoder_calls == 4
    assert result.state == (BLANK, 2, 0, 3)
    assert int(result.decoder_output[0, 0, 0]) == 3


def test_max_symbols_forces_an_advance_only_when_the_token_stays():
    # max 2 tokens per frame
    script = {
        (0, 0): (1, 0, 1.0),  # 1st token on frame 0, stays
        (0, 1): (2, 1, 1.0),  # 2nd token on frame 0 with duration 1: moves to frame 1 by itself, not to 2
        (1, 2): (3, 0, 1.0),  # 1st on frame 1
        (1, 3): (0, 0, 1.0),  # 2nd on frame 1, duration 0: the limit forces frame 2
        (2, 4): (1, 0, 1.0),  # 1st on frame 2
        (2, 5): (BLANK, 0, 1.0),  # a blank does not count: blank with duration 0 -> frame 3
        (3, 5): (2, 0, 1.0),  # 1st on frame 3 (the count restarts on a new frame)
        (3, 6): (3, 0, 1.0),  # 2nd on frame 3 -> forced to frame 4 = T: the end
    }
    result, fake = run(script, num_frames=4, max_symbols=2)
    assert result.tokens == [1, 2, 3, 0, 1, 2, 3]
    assert result.frames == [0, 0, 1, 1, 2, 3, 3]
    assert result.durations == [0, 1, 0, 0, 0, 0, 0]
    assert fake.joint_calls == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5), (3, 5), (3, 6)]
    assert result.steps == 8


def test_max_symbols_one_emits_one_token_per_frame():
    script = {(0, 0): (1, 0, 1.0), (1, 1): (2, 0, 1.0), (2, 2): (3, 3, 1.0)}
    result, fake = run(script, num_frames=4, max_symbols=1)
    assert result.tokens == [1, 2, 3]
    assert result.frames == [0, 1, 2]
    assert result.durations == [0, 0, 3]


def test_stops_at_encoder_length_not_at_T():
    # frames 3..5 exist but are past encoder_length: the script lacks them, evaluating one would fail
    script = {(0, 0): (BLANK, 1, 1.0), (1, 0): (1, 1, 1.0), (2, 1): (BLANK, 0, 1.0)}
    result, fake = run(script, num_frames=6, length=3)
    assert result.tokens == [1]
    assert result.frames == [1]
    assert fake.joint_calls == [(0, 0), (1, 0), (2, 1)]
    # the encoder component's [1] int32 length is taken as is
    again, _ = run(script, num_frames=6, length=np.array([3], np.int32))
    assert again.tokens == [1] and again.steps == 3


def test_zero_length_evaluates_nothing():
    result, fake = run({}, num_frames=4, length=0)
    assert (result.tokens, result.steps, result.margins) == ([], 0, [])
    assert [tok for tok, _ in fake.decoder_calls] == [BLANK]  # the start symbol only
    assert result.min_margin == float("inf")


def test_ties_go_to_the_lowest_index_as_in_torch():
    def joint(enc, dec):
        logits = np.zeros(NUM_LOGITS, np.float32)
        logits[[1, BLANK]] = 3.0  # token 1 and blank tie: token 1 (lower index) wins
        logits[V + 1:] = [0.0, 1.0, 1.0]  # durations 1 and 3 tie: 1 wins
        return logits

    result = greedy_tdt_decode(encoder_frames(2), 2, lambda tok, st: (np.zeros((1, 2, 1), np.float32), st), joint,
                               None, blank_id=BLANK, durations=DURATIONS)
    assert result.tokens == [1, 1]
    assert result.durations == [1, 1]
    assert result.margins == [0.0, 0.0] and result.duration_margins == [0.0, 0.0]


def test_float16_logits_decode_the_same():
    script = {(0, 0): (BLANK, 0, 0.5), (1, 0): (2, 0, 0.25), (1, 1): (0, 3, 0.125)}
    r32, _ = run(script, num_frames=4)
    r16, _ = run(script, num_frames=4, dtype=np.float16)
    assert (r16.tokens, r16.frames, r16.durations, r16.margins) == (r32.tokens, r32.frames, r32.durations, r32.margins)
    assert r16.tokens == [2, 0]


# ---- bad input ------------------------------------------------------------------------------------------------
def _call(enc=None, length=3, joint=None, **kw):
    enc = encoder_frames(3) if enc is None else enc
    fake = Scripted({(t, 0): (BLANK, 1, 1.0) for t in range(3)})
    kw = {"blank_id": BLANK, "durations": DURATIONS} | kw
    return greedy_tdt_decode(enc, length, fake.decoder_step, joint or fake.joint_step, (), **kw)


@pytest.mark.parametrize(("enc", "length", "match"), [
    (np.zeros((2, 3), np.float32), 3, r"encoder_out: expected shape \[1, D, T\].*got \[2, 3\]"),
    (np.zeros((1, 1, 2, 3), np.float32), 3, r"encoder_out: .*got \[1, 1, 2, 3\]"),
    (np.zeros((2, 2, 3), np.float32), 3, r"encoder_out: .*batch 1.*got \[2, 2, 3\]"),
    (np.zeros((1, 2, 3), np.int32), 3, r"encoder_out: expected a floating-point array, got dtype int32"),
    (None, 4, r"encoder_length: expected 0 <= encoder_length <= T = 3 .*got 4"),
    (None, -1, r"encoder_length: .*got -1"),
    (None, 2.0, r"encoder_length: expected an integer, got float"),
    (None, True, r"encoder_length: expected an integer"),
    (None, np.array([1, 2]), r"encoder_length: .*one-element integer array, got shape \[2\]"),
    (None, np.array([2.0]), r"encoder_length: .*dtype float64"),
])
def test_bad_encoder_input(enc, length, match):
    with pytest.raises(ValueError, match=match):
        _call(enc, length)


@pytest.mark.parametrize(("kw", "match"), [
    ({"blank_id": 0}, r"blank_id: expected an integer >= 1"),
    ({"blank_id": 4.0}, r"blank_id: expected an integer >= 1"),
    ({"durations": []}, r"durations: expected at least one duration"),
    ({"durations": [0, -1, 2]}, r"durations\[1\]: expected a non-negative integer, got -1"),
    ({"durations": [0, 1.5, 2]}, r"durations\[1\]: expected a non-negative integer, got 1.5"),
    ({"durations": 3}, r"durations: expected a sequence"),
    ({"max_symbols_per_frame": 0}, r"max_symbols_per_frame: expected an integer >= 1, got 0"),
    ({"max_symbols_per_frame": None}, r"max_symbols_per_frame: expected an integer >= 1, got None"),
])
def test_bad_decoding_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        _call(**kw)


@pytest.mark.parametrize(("shape", "match"), [
    ((1, 1, 1, V + 1), r"joint_step: .*= 4 \+ 1 \+ 3 = 8 .*got shape \[1, 1, 1, 5\]"),
    ((1, 3, 1, NUM_LOGITS), r"joint_step: .*got shape \[1, 3, 1, 8\]"),  # a whole window, not one frame
    ((), r"joint_step: .*got shape \[\]"),
])
def test_logits_of_the_wrong_size(shape, match):
    with pytest.raises(ValueError, match=match):
        _call(joint=lambda enc, dec: np.zeros(shape, np.float32))


def test_nan_logits():
    def joint(enc, dec):
        logits = np.zeros(NUM_LOGITS, np.float32)
        logits[2] = np.nan
        return logits

    with pytest.raises(ValueError, match=r"joint_step: logits contain NaN at frame 0"):
        _call(joint=joint)


# ---- against NeMo ---------------------------------------------------------------------------------------------
WINDOW = 240_000  # 15 s at 16 kHz, the encoder window the components are built for


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for this module: the ops are tiny (batch 1, one step), and on a busy machine extra
    threads only wait on each other (measured: a decode 30x slower with 2 threads on 2 shared cores)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nemo_model(one_thread):
    pytest.importorskip("nemo.collections.asr")
    from conversions.models.parakeet_tdt.nemo_models import tiny_parakeet_tdt

    return tiny_parakeet_tdt(MODEL_CACHE)


@pytest.fixture(scope="module")
def encoded(nemo_model):
    """name -> (encoder output [1, D, T] tensor, encoder length [1] tensor) of the clip and two generated signals,
    each in the 15 s window; the clip with its true length (so encoder_length < T), the others filling it."""
    import torch

    from conversions.audio import read_wav

    clip = read_wav(DATA / "speech_noise_16k.wav")
    rng = np.random.default_rng(0)
    seconds = np.arange(WINDOW) / 16000
    signals = {
        "clip": (clip, clip.size),
        "noise": (0.1 * rng.standard_normal(WINDOW), WINDOW),
        "tone": (0.3 * np.sin(2 * np.pi * 440 * seconds) * (seconds < 12), WINDOW),
    }
    out = {}
    for name, (samples, length) in signals.items():
        window = np.zeros((1, WINDOW), np.float32)
        window[0, :samples.size] = samples
        with torch.inference_mode():
            mel, mel_len = nemo_model.preprocessor(input_signal=torch.from_numpy(window),
                                                   length=torch.tensor([length]))
            out[name] = nemo_model.encoder(audio_signal=mel, length=mel_len)
    assert out["clip"][0].shape[-1] == 188 and int(out["clip"][1][0]) < 188
    return out


class TorchSteps:
    """The decoder and joint of a NeMo model behind the component contract: decoder
    ``(token, (h, c)) -> ([1, H, 1], (h, c))`` with numpy state ``[L, 1, H]``; joint ``([1, D, 1], [1, H, 1]) ->
    [1, 1, 1, V+1+N]`` (NeMo's joint is time-major, [B, T, D] and [B, U, H])."""

    def __init__(self, model, joint=None):
        self.model = model
        self.joint = joint if joint is not None else model.joint
        layers, hidden = model.decoder.pred_rnn_layers, model.decoder.pred_hidden
        self.initial_state = (np.zeros((layers, 1, hidden), np.float32), np.zeros((layers, 1, hidden), np.float32))

    def decoder_step(self, token, state):
        import torch

        h, c = state
        with torch.inference_mode():
            g, (h, c) = self.model.decoder.predict(y=torch.tensor([[token]], dtype=torch.long),
                                                   state=[torch.from_numpy(h), torch.from_numpy(c)], add_sos=False)
        return g.transpose(1, 2).numpy(), (h.numpy(), c.numpy())

    def joint_step(self, enc, dec):
        import torch

        with torch.inference_mode():
            return self.joint.joint(torch.from_numpy(enc).transpose(1, 2), torch.from_numpy(dec).transpose(1, 2)).numpy()

    def decode(self, enc, enc_len, max_symbols=10) -> TDTResult:
        return greedy_tdt_decode(enc.numpy(), enc_len.numpy(), self.decoder_step, self.joint_step, self.initial_state,
                                 blank_id=self.model.decoder.blank_idx, durations=self.model.cfg.decoding.durations,
                                 max_symbols_per_frame=max_symbols)


@pytest.fixture(scope="module")
def scrambled_joint(nemo_model, encoded):
    """A copy of the model's joint whose output layer is replaced so that decisions vary: the tiny model's joint
    hidden vector barely changes between frames (random weights), so its argmax does not either. The new layer
    is a fixed random matrix applied to the hidden vector's deviation from its mean over the clip (the bias
    cancels the mean), scaled to unit spread, with the blank, duration 0 and duration 1 raised so that each is chosen
    at times."""
    import torch

    joint = copy.deepcopy(nemo_model.joint).eval()
    out = joint.joint_net[-1]
    enc, enc_len = encoded["clip"]
    blank = nemo_model.decoder.blank_idx
    with torch.inference_mode():
        g, _ = nemo_model.decoder.predict(y=torch.tensor([[blank]]), state=None, add_sos=False)
        f = joint.project_encoder(enc.transpose(1, 2))[0, : int(enc_len[0])]
        hidden = joint.joint_net[:-1](f + joint.project_prednet(g)[0])
        centre = hidden.mean(0)
        weight = torch.randn(out.weight.shape, generator=torch.Generator().manual_seed(7))
        weight /= ((hidden - centre) @ weight.T).std()
        out.weight.copy_(weight)
        out.bias.copy_(-(weight @ centre))
        out.bias[blank] += 3.5
        out.bias[blank + 1] += 0.6  # durations follow the blank; [0] is duration 0
        out.bias[blank + 2] += 0.4  # duration 1, rarely the argmax otherwise
    return joint


def nemo_decode(model, enc, enc_len, strategy: str, max_symbols: int, joint=None):
    """NeMo's greedy TDT decoding of one encoder output: (tokens, frames, durations) of its hypothesis."""
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(model.cfg.decoding))
    cfg.strategy = strategy
    cfg.greedy.max_symbols = max_symbols
    cfg.tdt_include_token_duration = True
    decoding = RNNTBPEDecoding(decoding_cfg=cfg, decoder=model.decoder, joint=joint or model.joint,
                               tokenizer=model.tokenizer)
    assert decoding.decoding.max_symbols == max_symbols
    (hyp,) = decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                      return_hypotheses=True)

    def as_list(x):
        return x.tolist() if hasattr(x, "tolist") else list(x)

    return as_list(hyp.y_sequence), as_list(hyp.timestamp), as_list(hyp.token_duration)


def assert_same(ours: TDTResult, theirs, what: str):
    """Ours and NeMo's (tokens, frames, durations) are equal; if not, say where they part and our margin there."""
    tokens, frames, durations = theirs
    if (ours.tokens, ours.frames, ours.durations) == (tokens, frames, durations):
        return
    mine, nemo = list(zip(ours.tokens, ours.frames, ours.durations)), list(zip(tokens, frames, durations))
    i = next((i for i, (a, b) in enumerate(zip(mine, nemo)) if a != b), min(len(mine), len(nemo)))
    margin = ours.margins[ours.token_steps[i]] if i < len(mine) else None
    pytest.fail(f"{what}: ours {len(mine)} tokens, NeMo {len(nemo)}; first difference at token {i}: ours "
                f"(token, frame, duration) {mine[i:i + 2]}, NeMo {nemo[i:i + 2]}; our token margin there {margin}")


def test_default_max_symbols_is_nemo_configured_value(nemo_model):
    import inspect

    default = inspect.signature(greedy_tdt_decode).parameters["max_symbols_per_frame"].default
    assert nemo_model.decoding.decoding.max_symbols == default == 10
    assert type(nemo_model.decoding.decoding).__name__ == "GreedyBatchedTDTInfer"  # the configured strategy


@pytest.mark.parametrize("signal", ["clip", "noise", "tone"])
def test_matches_nemo_greedy_tdt(nemo_model, encoded, signal):
    enc, enc_len = encoded[signal]
    ours = TorchSteps(nemo_model).decode(enc, enc_len)
    for strategy in ("greedy_batch", "greedy"):
        assert_same(ours, nemo_decode(nemo_model, enc, enc_len, strategy, 10), f"{signal} {strategy}")
    assert ours.tokens, "the random model emits tokens on every signal (else the comparison shows little)"
    print(f"\n{signal}: {len(ours.tokens)} tokens in {int(enc_len[0])} frames, {ours.steps} joint steps, "
          f"min margin {ours.min_margin:.3g}")


@pytest.mark.parametrize("max_symbols", [10, 2, 1])
@pytest.mark.parametrize("signal", ["clip", "noise", "tone"])
def test_matches_nemo_greedy_batch_in_the_corners(nemo_model, encoded, scrambled_joint, signal, max_symbols):
    enc, enc_len = encoded[signal]
    ours = TorchSteps(nemo_model, scrambled_joint).decode(enc, enc_len, max_symbols)
    assert_same(ours, nemo_decode(nemo_model, enc, enc_len, "greedy_batch", max_symbols, scrambled_joint),
                f"{signal} greedy_batch max_symbols={max_symbols}")
    if max_symbols == 10:
        # NeMo's non-batched decoder agrees here: on these signals the 10th step on a frame is always a token of
        # duration 0, where both advance one frame (its quirk needs a 10th step of duration > 0, module docstring)
        assert_same(ours, nemo_decode(nemo_model, enc, enc_len, "greedy", max_symbols, scrambled_joint),
                    f"{signal} greedy")


def test_the_scrambled_joint_reaches_the_corners(nemo_model, encoded, scrambled_joint):
    """What makes the comparison above worth having: on the clip, the scrambled joint produces blanks of
    duration 0 and > 0, tokens of every duration, frames that reach the symbol limit (10 and 2), and a last token
    whose duration jumps past the end."""
    enc, enc_len = encoded["clip"]
    steps = TorchSteps(nemo_model, scrambled_joint)
    blank = nemo_model.decoder.blank_idx
    token_durations = set()
    for max_symbols in (10, 2):
        ours = steps.decode(enc, enc_len, max_symbols)
        blank_durations = [d for t, d in zip(ours.step_tokens, ours.step_durations) if t == blank]
        assert 0 in blank_durations and any(d > 0 for d in blank_durations), "blanks of duration 0 and > 0"
        token_durations |= set(ours.durations)
        assert ours.frames[-1] + ours.durations[-1] > int(enc_len[0]), "the last token jumps past the end"
        per_frame = max(collections.Counter(ours.frames).values())
        assert per_frame == max_symbols, "a frame reaches the symbol limit"
        print(f"\nscrambled clip max_symbols={max_symbols}: {len(ours.tokens)} tokens, {ours.steps} steps, "
              f"{len(blank_durations)} blanks, at most {per_frame} tokens on a frame, min margin {ours.min_margin:.3g}")
    for signal in ("noise", "tone"):
        token_durations |= set(steps.decode(*encoded[signal], 10).durations)
    assert token_durations == {0, 1, 2, 3, 4}, f"tokens of every duration: {sorted(token_durations)}"


@pytest.fixture(scope="module")
def constant_joint(nemo_model):
    """A copy of the joint that always says token 5 with duration index 3 (its output layer: zero weights, a bias)."""
    import torch

    joint = copy.deepcopy(nemo_model.joint).eval()
    out = joint.joint_net[-1]
    blank = nemo_model.decoder.blank_idx
    with torch.inference_mode():
        out.weight.zero_()
        out.bias.zero_()
        out.bias[5] = 5.0
        out.bias[blank + 1 + 3] = 5.0
    return joint


def test_nemo_non_batched_greedy_adds_a_frame_after_max_symbols(nemo_model, encoded, constant_joint):
    """The documented divergence of NeMo's ``greedy`` (non-batched) strategy, which this decoder does not follow:
    with max_symbols=1 it advances duration + 1 frames after every step. A joint that always predicts a token with
    duration 3 makes ``greedy_batch`` and ours step 3 frames and ``greedy`` 4. If NeMo changes this, the module
    docstring must change with it."""
    enc, enc_len = encoded["clip"]
    ours = TorchSteps(nemo_model, constant_joint).decode(enc, enc_len, max_symbols=1)
    batched = nemo_decode(nemo_model, enc, enc_len, "greedy_batch", 1, constant_joint)
    sequential = nemo_decode(nemo_model, enc, enc_len, "greedy", 1, constant_joint)
    assert_same(ours, batched, "clip greedy_batch max_symbols=1")
    assert set(ours.durations) == {3} and ours.frames == list(range(0, int(enc_len[0]), 3))
    assert sequential[1] == list(range(0, int(enc_len[0]), 4))
