"""Token and word timestamps from CTC spikes.

A CTC model fires each token on (usually) one frame: its spike. The spike of every token of
a hypothesis comes from the Viterbi (forced) alignment of that hypothesis to the CTC
log-probs, so the timestamps fit whichever search produced the tokens. A token spans
`gap` seconds either side of its spike, split at the midpoint where neighbours are closer
than that (WeNet's runtime uses the same 100 ms gap rule). `timed_units` assembles the
timestamps of a result (its pieces and words) for every caller: the Transcriber, the
streaming Recognizer and the ONNX runtime. Torch-free: log-probs are numpy arrays.
"""

from dataclasses import dataclass

import numpy as np

from u2moe.data.tokenizer import WORD_BOUNDARY
from u2moe.decode.search import host_array

NEG_INF = float("-inf")


@dataclass
class TimedUnit:
    text: str
    start: float  # seconds from the start of the audio
    end: float


def ctc_spikes(log_probs: np.ndarray, tokens: list[int], blank_id: int = 0) -> list[int] | None:
    """The spike frame of each token: log_probs (T, V) of one utterance -> frame indices.

    None when no CTC path emits `tokens` in T frames (too many tokens for the frames).
    """
    if not tokens:
        return []
    logp = host_array(log_probs).astype(np.float32, copy=False)
    labels = np.full(2 * len(tokens) + 1, blank_id)
    labels[1::2] = tokens
    emit = logp[:, labels]  # (T, S): state s emits labels[s]
    num_states = len(labels)
    # A token state may be entered from two states back unless that is the same token.
    skip = np.zeros(num_states, dtype=bool)
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    score = np.full(num_states, NEG_INF)
    score[:2] = emit[0, :2]
    back = np.zeros((len(emit), num_states), dtype=np.int8)  # 0: stay, 1: from s-1, 2: from s-2
    for t in range(1, len(emit)):
        from_prev = np.concatenate(([NEG_INF], score[:-1]))
        from_skip = np.where(skip, np.concatenate(([NEG_INF, NEG_INF], score[:-2])), NEG_INF)
        candidates = np.stack([score, from_prev, from_skip])
        back[t] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + emit[t]
    state = num_states - 1 if score[-1] >= score[-2] else num_states - 2
    if score[state] == NEG_INF:
        return None
    path = np.empty(len(emit), dtype=np.int64)
    for t in range(len(emit) - 1, -1, -1):
        path[t] = state
        state -= back[t, state]
    spikes = []
    for i, token in enumerate(tokens):
        frames = np.flatnonzero(path == 2 * i + 1)
        spikes.append(int(frames[np.argmax(logp[frames, token])]))
    return spikes


def token_times(
    spikes: list[int], frame_shift: float, duration: float, gap: float = 0.1
) -> list[tuple[float, float]]:
    """(start, end) seconds of each token from its spike frame (frame_shift seconds apart)."""
    centers = [frame * frame_shift for frame in spikes]
    times = []
    for i, center in enumerate(centers):
        start, end = max(center - gap, 0.0), min(center + gap, duration)
        if i > 0 and center - centers[i - 1] < 2 * gap:
            start = (centers[i - 1] + center) / 2
        if i + 1 < len(centers) and centers[i + 1] - center < 2 * gap:
            end = (center + centers[i + 1]) / 2
        times.append((round(start, 3), round(end, 3)))
    return times


def word_times(pieces: list[str], times: list[tuple[float, float]]) -> list[TimedUnit]:
    """Group timed token pieces into words.

    A piece that starts with the word boundary `▁` (a sentencepiece word start, or the char
    tokenizer's space unit) opens a new word; other pieces continue the current word. A word
    spans its first to its last non-boundary piece.
    """
    words: list[TimedUnit] = []
    open_new = True
    for piece, (start, end) in zip(pieces, times, strict=True):
        if piece.startswith(WORD_BOUNDARY):
            piece, open_new = piece[len(WORD_BOUNDARY) :], True
        if not piece:
            continue
        if open_new or not words:
            words.append(TimedUnit(piece, start, end))
            open_new = False
        else:
            words[-1] = TimedUnit(words[-1].text + piece, words[-1].start, end)
    return words


def timed_units(
    log_probs: np.ndarray,
    tokens: list[int],
    units: list[str],
    frame_shift: float,
    duration: float,
    start: float = 0.0,
) -> tuple[list[TimedUnit], list[TimedUnit]] | None:
    """(pieces, words) of a result with their times: log_probs (T, V) of its utterance,
    `units` the tokenizer's unit strings, frame_shift seconds per CTC frame, duration the
    utterance's seconds, start the seconds before it (a stream's earlier utterances).
    None when the tokens have no CTC alignment (an attention-mode hypothesis can outgrow
    the frames)."""
    spikes = ctc_spikes(log_probs, tokens)
    if spikes is None:
        return None
    times = token_times(spikes, frame_shift, duration)
    pieces = [units[i] for i in tokens]

    def shifted(unit: TimedUnit) -> TimedUnit:
        return TimedUnit(unit.text, round(start + unit.start, 3), round(start + unit.end, 3))

    timed_pieces = [TimedUnit(p, *t) for p, t in zip(pieces, times, strict=True)]
    return [shifted(p) for p in timed_pieces], [shifted(w) for w in word_times(pieces, times)]
