"""Search: CTC greedy, CTC prefix beam, attention beam, and attention rescoring (U2++ pass 2).

Scores follow WeNet's `wenet/transformer/search.py` so that imported WeNet models decode to
the same tokens and scores:
- the CTC prefix score is log(p_blank_ending + p_nonblank_ending) summed over all alignments
  that survive the per-frame pruning to the `beam_size` most likely tokens;
- an attention score is the decoder's log-probability of the tokens plus that of <eos>; the
  right-to-left decoder scores the reversed hypothesis;
- rescoring: ctc_weight * ctc + (1 - reverse_weight) * l2r + reverse_weight * r2l.

Torch-free: log-probs are numpy arrays (tensors are accepted too, see `host_array`), and
the attention scores of a rescoring pass come from a `u2moe.backends.Backend`. The attention
beam search (WeNet's `attention` mode) needs the decoder step by step and lives with the
PyTorch backend.
"""

import math
from dataclasses import dataclass

import numpy as np

NEG_INF = float("-inf")
NBEST_MODES = ("ctc_prefix_beam_search", "attention_rescoring")  # built on the CTC n-best


def host_array(values) -> np.ndarray:
    """A numpy array of `values`: an array, a list, or a torch tensor on any device (moved to
    the host; torch is not imported here)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # log domain; what it sums depends on the search (see each function)


def ctc_greedy_search(log_probs: np.ndarray, lengths: np.ndarray) -> list[Hypothesis]:
    """Best path per frame, repeats merged, blanks (id 0) removed.

    log_probs (B, T, V), lengths (B,). Score: log-probability of the best path.
    """
    log_probs = host_array(log_probs)
    best_ids = log_probs.argmax(axis=-1)  # (B, T)
    best_logp = np.take_along_axis(log_probs, best_ids[..., None], axis=-1)[..., 0]
    results = []
    for logp, ids, length in zip(best_logp, best_ids, host_array(lengths).tolist(), strict=True):
        path = ids[:length].tolist()
        tokens = [u for i, u in enumerate(path) if u != 0 and (i == 0 or u != path[i - 1])]
        results.append(Hypothesis(tokens, float(logp[:length].sum(dtype=np.float64))))
    return results


def top_k(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values per row of (T, V), largest first -> (values (T, k), ids (T, k))."""
    ids = np.argpartition(-log_probs, k - 1, axis=-1)[:, :k]
    values = np.take_along_axis(log_probs, ids, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    return np.take_along_axis(values, order, axis=-1), np.take_along_axis(ids, order, axis=-1)


def _log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class CtcPrefixBeamSearch:
    """CTC prefix beam search over the frames of one utterance, fed in any number of pieces.

    Feeding frames chunk by chunk (streaming) gives exactly the result of feeding them at once.
    Each frame is pruned to its `beam_size` most likely tokens (blank included), then the
    `beam_size` best prefixes are kept. Plain Python over small dicts: the per-frame work is
    beam_size**2 additions in log space, and tensors are converted to lists once per call.
    """

    def __init__(self, beam_size: int, blank_id: int = 0):
        self.beam_size = beam_size
        self.blank_id = blank_id
        self.reset()

    def reset(self) -> None:
        # prefix -> [log p(ending in blank), log p(ending in a token)], best first
        self.beam: list[tuple[tuple[int, ...], list[float]]] = [((), [0.0, NEG_INF])]

    def advance(self, log_probs: np.ndarray) -> None:
        """Consume frames: log_probs (T, V) of one utterance."""
        log_probs = host_array(log_probs)
        if len(log_probs) == 0:
            return
        top_logp, top_ids = top_k(log_probs, min(self.beam_size, log_probs.shape[-1]))
        blank = self.blank_id
        for frame_logp, frame_ids in zip(top_logp.tolist(), top_ids.tolist(), strict=True):
            scored = [(prefix, pb, pnb, _log_add(pb, pnb)) for prefix, (pb, pnb) in self.beam]
            next_beam: dict[tuple[int, ...], list[float]] = {}
            for u, p in zip(frame_ids, frame_logp, strict=True):
                for prefix, pb, pnb, total in scored:
                    if u == blank:  # prefix unchanged, now ending in blank
                        entry = next_beam.setdefault(prefix, [NEG_INF, NEG_INF])
                        entry[0] = _log_add(entry[0], total + p)
                    elif prefix and prefix[-1] == u:
                        # "a a" -> "a" (repeat merged), "a - a" -> "a a" (blank in between)
                        entry = next_beam.setdefault(prefix, [NEG_INF, NEG_INF])
                        entry[1] = _log_add(entry[1], pnb + p)
                        entry = next_beam.setdefault(prefix + (u,), [NEG_INF, NEG_INF])
                        entry[1] = _log_add(entry[1], pb + p)
                    else:
                        entry = next_beam.setdefault(prefix + (u,), [NEG_INF, NEG_INF])
                        entry[1] = _log_add(entry[1], total + p)
            # sorted() is stable: ties keep insertion order, as WeNet's search does. Prefixes
            # with no path ("a a" reached from "a" without a blank) are dropped.
            ranked = sorted(next_beam.items(), key=lambda kv: _log_add(*kv[1]), reverse=True)
            self.beam = [kv for kv in ranked[: self.beam_size] if max(kv[1]) > NEG_INF]

    def nbest(self) -> list[Hypothesis]:
        """The surviving prefixes, best first, scored log(p_blank_ending + p_token_ending)."""
        return [Hypothesis(list(prefix), _log_add(pb, pnb)) for prefix, (pb, pnb) in self.beam]


def ctc_prefix_beam_search(
    log_probs: np.ndarray, lengths: np.ndarray, beam_size: int
) -> list[list[Hypothesis]]:
    """The n-best list (best first) of each utterance. log_probs (B, T, V), lengths (B,)."""
    nbests = []
    for logp, length in zip(host_array(log_probs), host_array(lengths).tolist(), strict=True):
        search = CtcPrefixBeamSearch(beam_size)
        search.advance(logp[:length])
        nbests.append(search.nbest())
    return nbests


def rescoring_scores(
    ctc: np.ndarray, l2r: np.ndarray, r2l: np.ndarray, ctc_weight: float, reverse_weight: float
) -> np.ndarray:
    """ctc_weight * ctc + (1 - reverse_weight) * l2r + reverse_weight * r2l, float64 (N,)."""
    attention = np.asarray(l2r, dtype=np.float64)
    if reverse_weight > 0:
        attention = (1 - reverse_weight) * attention + reverse_weight * np.asarray(r2l)
    return attention + ctc_weight * np.asarray(ctc, dtype=np.float64)


def attention_rescoring(
    backend,
    nbests: list[list[Hypothesis]],
    enc: np.ndarray,
    enc_lengths: np.ndarray,
    ctc_weight: float,
    reverse_weight: float,
) -> list[Hypothesis]:
    """U2++ second pass: rescore each utterance's CTC n-best with both attention decoders.

    backend: a `u2moe.backends.Backend`; nbests: per utterance, hypotheses whose score is
    the CTC prefix score; enc (B, T, d), enc_lengths (B,). Returns the best hypothesis per
    utterance (the first of equal maxima), scored as `rescoring_scores`.
    """
    if reverse_weight > 0 and not backend.info.has_right_decoder:
        raise ValueError("reverse_weight > 0 needs a model with a right-to-left decoder")
    results = []
    for nbest, utterance, length in zip(nbests, enc, host_array(enc_lengths), strict=True):
        hyps = [h.tokens for h in nbest]
        l2r, r2l = backend.decoder_scores(utterance, int(length), hyps)
        ctc = np.array([h.score for h in nbest])
        score = rescoring_scores(ctc, l2r, r2l, ctc_weight, reverse_weight)
        best = int(score.argmax())
        results.append(Hypothesis(hyps[best], float(score[best])))
    return results
