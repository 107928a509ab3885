"""Search: CTC greedy, CTC prefix beam, attention beam, and attention rescoring (U2++ pass 2).

Scores follow WeNet's `wenet/transformer/search.py` so that imported WeNet models decode to
the same tokens and scores:
- the CTC prefix score is log(p_blank_ending + p_nonblank_ending) summed over all alignments
  that survive the per-frame pruning to the `beam_size` most likely tokens;
- an attention score is the decoder's log-probability of the tokens plus that of <eos>; the
  right-to-left decoder scores the reversed hypothesis;
- rescoring: ctc_weight * ctc + (1 - reverse_weight) * l2r + reverse_weight * r2l.
"""

import math
import time
from dataclasses import dataclass

import torch

from u2moe.decode.config import DecodeConfig
from u2moe.model.mask import make_pad_mask
from u2moe.model.u2 import decoder_inputs

NEG_INF = float("-inf")
NBEST_MODES = ("ctc_prefix_beam_search", "attention_rescoring")  # built on the CTC n-best


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # log domain; what it sums depends on the search (see each function)


def ctc_greedy_search(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
    """Best path per frame, repeats merged, blanks (id 0) removed.

    log_probs (B, T, V), lengths (B,). Score: log-probability of the best path.
    """
    best_logp, best_ids = log_probs.max(dim=-1)  # (B, T)
    results = []
    for logp, ids, length in zip(best_logp, best_ids, lengths.tolist(), strict=True):
        path = ids[:length].tolist()
        tokens = [u for i, u in enumerate(path) if u != 0 and (i == 0 or u != path[i - 1])]
        results.append(Hypothesis(tokens, float(logp[:length].double().sum())))
    return results


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

    def advance(self, log_probs: torch.Tensor) -> None:
        """Consume frames: log_probs (T, V) of one utterance."""
        if log_probs.size(0) == 0:
            return
        k = min(self.beam_size, log_probs.size(-1))
        top_logp, top_ids = log_probs.topk(k, dim=-1)
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
    log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int
) -> list[list[Hypothesis]]:
    """The n-best list (best first) of each utterance. log_probs (B, T, V), lengths (B,)."""
    nbests = []
    for logp, length in zip(log_probs, lengths.tolist(), strict=True):
        search = CtcPrefixBeamSearch(beam_size)
        search.advance(logp[:length])
        nbests.append(search.nbest())
    return nbests


def _shift_left(hyps_in: torch.Tensor, eos: int) -> torch.Tensor:
    """Decoder inputs (N, L) = sos + hyp + eos padding -> targets (N, L) = hyp + eos padding."""
    return torch.cat([hyps_in[:, 1:], torch.full_like(hyps_in[:, :1], eos)], dim=1)


def _sequence_log_probs(log_probs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor):
    """Sum over positions < length of log_probs (N, L, V) at targets (N, L) -> float64 (N,)."""
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
    valid = torch.arange(targets.size(1), device=targets.device) < lengths.unsqueeze(1)
    return picked.masked_fill(~valid, 0.0).sum(-1)


@torch.no_grad()
def attention_rescoring(
    model,
    nbests: list[list[Hypothesis]],
    enc: torch.Tensor,
    enc_lengths: torch.Tensor,
    ctc_weight: float,
    reverse_weight: float,
) -> list[Hypothesis]:
    """U2++ second pass: rescore each utterance's CTC n-best with both attention decoders.

    nbests: per utterance, hypotheses whose score is the CTC prefix score. enc (B, T, d),
    enc_lengths (B,). All hypotheses of the batch go through the decoders in one call.
    Returns the best hypothesis per utterance, scored
    ctc_weight * ctc + (1 - reverse_weight) * l2r + reverse_weight * r2l.
    """
    hyps = [h.tokens for nbest in nbests for h in nbest]
    owner = torch.tensor([b for b, nbest in enumerate(nbests) for _ in nbest], device=enc.device)
    l2r_in, lengths, r2l_in = decoder_inputs(hyps, model.sos, model.eos, enc.device)
    l2r, r2l = model.decoder_log_probs(
        enc[owner], enc_lengths[owner], l2r_in, lengths, r2l_in if reverse_weight > 0 else None
    )
    # position j predicts token j of the hypothesis, position len(hyp) predicts eos
    score = _sequence_log_probs(l2r, _shift_left(l2r_in, model.eos), lengths)
    if reverse_weight > 0:
        if r2l is None:
            raise ValueError("reverse_weight > 0 needs a model with a right-to-left decoder")
        r2l_score = _sequence_log_probs(r2l, _shift_left(r2l_in, model.eos), lengths)
        score = (1 - reverse_weight) * score + reverse_weight * r2l_score
    ctc_scores = torch.tensor([h.score for nbest in nbests for h in nbest], dtype=torch.float64)
    score = score.cpu() + ctc_weight * ctc_scores
    results, start = [], 0
    for nbest in nbests:
        best = start + int(score[start : start + len(nbest)].argmax())  # first of equal maxima
        results.append(Hypothesis(hyps[best], float(score[best])))
        start += len(nbest)
    return results


@torch.no_grad()
def attention_beam_search(
    model, enc: torch.Tensor, enc_lengths: torch.Tensor, beam_size: int
) -> list[Hypothesis]:
    """Beam search with the left-to-right decoder alone (WeNet's `attention` mode).

    enc (B, T, d), enc_lengths (B,). Hypotheses grow one token per step for all utterances
    at once, until every beam has emitted eos or T tokens were emitted (T: the longest
    utterance of the batch, as WeNet does). Score: sum of token and eos log-probs.
    """
    decoder = model.decoder.left_decoder
    batch, max_len, _ = enc.shape
    device, running = enc.device, batch * beam_size
    sos, eos = model.sos, model.eos
    memory = enc.repeat_interleave(beam_size, dim=0)  # (B*N, T, d)
    memory_mask = ~make_pad_mask(enc_lengths, max_len).unsqueeze(1)  # (B, 1, T)
    memory_mask = memory_mask.repeat_interleave(beam_size, dim=0)  # (B*N, 1, T)
    hyps = torch.full((running, 1), sos, dtype=torch.long, device=device)
    # only the first beam of each utterance is alive at the start
    scores = torch.full((batch, beam_size), NEG_INF, device=device)
    scores[:, 0] = 0.0
    scores = scores.view(running, 1)
    # each beam branches into its k best tokens (k < beam_size only for tiny vocabularies);
    # a finished beam continues with one eos at no cost, its other branches are dead
    k = min(beam_size, model.vocab_size)
    finished_logp = torch.full((k,), NEG_INF, device=device)
    finished_logp[0] = 0.0
    finished = torch.zeros(running, 1, dtype=torch.bool, device=device)
    base = torch.arange(batch, device=device).unsqueeze(1) * beam_size  # (B, 1)
    cache = None
    for step in range(1, max_len + 1):
        if finished.all():
            break
        causal = torch.ones(step, step, dtype=torch.bool, device=device).tril()
        logp, cache = decoder.forward_one_step(
            memory, memory_mask, hyps, causal.expand(running, step, step), cache
        )
        top_logp, top_ids = logp.topk(k, dim=-1)  # (B*N, k)
        top_logp = torch.where(finished, finished_logp, top_logp)
        top_ids = top_ids.masked_fill(finished, eos)
        candidates = (scores + top_logp).view(batch, beam_size * k)
        best_scores, best = candidates.topk(beam_size, dim=-1)  # (B, N)
        parent = (base + best // k).view(-1)  # (B*N,)
        token = top_ids.view(batch, -1).gather(1, best).view(-1, 1)
        cache = [c.index_select(0, parent) for c in cache]
        hyps = torch.cat([hyps.index_select(0, parent), token], dim=1)
        scores = best_scores.view(running, 1)
        finished = token == eos
    best_beam = scores.view(batch, beam_size).argmax(dim=-1)
    results = []
    for b in range(batch):
        row = b * beam_size + int(best_beam[b])
        tokens = hyps[row, 1:]
        results.append(Hypothesis(tokens[tokens != eos].tolist(), float(scores[row])))
    return results


@dataclass
class BatchDecoding:
    hyps: dict[str, list[Hypothesis]]  # mode -> best hypothesis of each utterance
    ctc_log_probs: torch.Tensor  # (B, T', V)
    enc_lengths: torch.Tensor  # (B,)
    # wall seconds: "encoder" (encoder + CTC head, shared by all modes), and per mode its own
    # search, counting the prefix beam search that attention_rescoring builds on
    seconds: dict[str, float]


def _encode(model, feats: torch.Tensor, feats_lengths: torch.Tensor, cfg: DecodeConfig):
    """(enc (B, T', d), enc_lengths (B,)): one masked pass, or chunk by chunk per utterance."""
    if not cfg.streaming:
        return model.encode(feats, feats_lengths, cfg.chunk_size, cfg.num_left_chunks)
    outputs = [
        model.encoder.forward_chunk_by_chunk(
            utterance[None, :length], cfg.chunk_size, cfg.num_left_chunks
        )[0][0]
        for utterance, length in zip(feats, feats_lengths.tolist(), strict=True)
    ]
    lengths = torch.tensor([len(out) for out in outputs], device=feats.device)
    return torch.nn.utils.rnn.pad_sequence(outputs, batch_first=True), lengths


@torch.no_grad()
def decode_batch(
    model, feats: torch.Tensor, feats_lengths: torch.Tensor, cfg: DecodeConfig, lexicon=None
) -> BatchDecoding:
    """Decode a batch in every mode of `cfg.modes`, sharing one encoder pass.

    feats (B, T, input_dim) raw fbank, feats_lengths (B,). The encoder sees the whole
    utterance with a chunk mask of cfg.chunk_size frames and cfg.num_left_chunks chunks of
    left context (-1, -1: full context), which equals chunk-by-chunk streaming; with
    cfg.streaming the encoder really runs chunk by chunk with caches, one utterance at a time.
    `lexicon` (a decode.lexicon.LexiconSearch) serves ctc_lexicon_beam_search.
    """
    start = time.perf_counter()
    enc, enc_lengths = _encode(model, feats, feats_lengths, cfg)
    ctc_log_probs = model.ctc_log_probs(enc)
    seconds = {"encoder": time.perf_counter() - start}
    nbests, nbest_seconds = None, 0.0
    if any(mode in NBEST_MODES for mode in cfg.modes):
        start = time.perf_counter()
        nbests = ctc_prefix_beam_search(ctc_log_probs.cpu(), enc_lengths.cpu(), cfg.beam_size)
        nbest_seconds = time.perf_counter() - start
    hyps: dict[str, list[Hypothesis]] = {}
    for mode in cfg.modes:
        start = time.perf_counter()
        if mode == "ctc_greedy_search":
            hyps[mode] = ctc_greedy_search(ctc_log_probs, enc_lengths)
        elif mode == "attention":
            hyps[mode] = attention_beam_search(model, enc, enc_lengths, cfg.beam_size)
        elif mode == "ctc_prefix_beam_search":
            hyps[mode] = [nbest[0] for nbest in nbests]
        elif mode == "ctc_lexicon_beam_search":
            if lexicon is None:
                raise ValueError("ctc_lexicon_beam_search needs a LexiconSearch")
            hyps[mode] = lexicon(ctc_log_probs, enc_lengths)
        elif mode == "attention_rescoring":
            hyps[mode] = attention_rescoring(
                model, nbests, enc, enc_lengths, cfg.ctc_weight, cfg.reverse_weight
            )
        else:
            raise ValueError(f"unknown decoding mode {mode!r}")
        seconds[mode] = time.perf_counter() - start
        if mode in NBEST_MODES:
            seconds[mode] += nbest_seconds
    return BatchDecoding(hyps, ctc_log_probs, enc_lengths, seconds)
