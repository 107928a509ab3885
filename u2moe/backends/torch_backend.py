"""The PyTorch model behind the `Backend` protocol: numpy <-> torch at the boundary.

Besides the protocol, `attention_beam_search` runs WeNet's `attention` mode, which needs
the left-to-right decoder step by step with its cache (PyTorch only).
"""

import numpy as np
import torch

from u2moe.backends import ModelInfo
from u2moe.decode.search import NEG_INF, Hypothesis
from u2moe.model.mask import make_pad_mask
from u2moe.model.u2 import U2Model, decoder_inputs


def model_info(model: U2Model) -> ModelInfo:
    encoder, cfg = model.encoder, model.cfg
    block = encoder.encoders[0]
    conv = block.conv_module
    static_chunk = cfg.chunk.static_chunk_size
    return ModelInfo(
        subsampling_rate=encoder.subsampling_rate,
        right_context=encoder.right_context,
        num_blocks=len(encoder.encoders),
        n_heads=block.self_attn.h,
        d_k=block.self_attn.d_k,
        output_size=encoder.output_size,
        cnn_cache_frames=0 if conv is None else conv.lorder,
        vocab_size=model.vocab_size,
        sos=model.sos,
        eos=model.eos,
        has_right_decoder=model.decoder.right_decoder is not None,
        feature_dim=encoder.input_dim,
        chunk_size=static_chunk if static_chunk > 0 else -1,
    )


class TorchBackend:
    """`Backend` over a U2Model (eval mode) on `device` (default: where its weights are)."""

    def __init__(self, model: U2Model, device: str | torch.device | None = None):
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.info = model_info(model)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    @torch.inference_mode()
    def encoder_step(self, chunk, offset, required_cache_size, att_cache, cnn_cache, att_mask):
        # A mask that hides nothing is left out: the same result, less work per layer.
        mask = None if att_mask.all() else self.tensor(att_mask)
        out, att_cache, cnn_cache = self.model.encoder.forward_chunk(
            self.tensor(chunk),
            self.tensor(offset),
            required_cache_size,
            self.tensor(att_cache),
            self.tensor(cnn_cache),
            mask,
        )
        return numpy(out), numpy(att_cache), numpy(cnn_cache)

    @torch.inference_mode()
    def encode(self, feats, lengths, chunk_size=-1, num_left_chunks=-1):
        feats = self.tensor(np.asarray(feats, dtype=np.float32))
        enc, enc_lengths = self.model.encode(
            feats, self.tensor(lengths), chunk_size, num_left_chunks
        )
        return numpy(enc), enc_lengths.cpu().numpy()

    @torch.inference_mode()
    def ctc_log_probs(self, enc):
        return numpy(self.model.ctc_log_probs(self.tensor(enc)))

    @torch.inference_mode()
    def decoder_scores(self, enc, enc_length, hyps):
        if not hyps:
            return np.zeros(0), np.zeros(0)
        n, eos = len(hyps), self.info.eos
        memory = self.tensor(enc[:enc_length])[None].repeat(n, 1, 1)
        memory_lengths = torch.full((n,), int(enc_length), device=self.device)
        l2r_in, lengths, r2l_in = decoder_inputs(hyps, self.info.sos, eos, self.device)
        right = r2l_in if self.info.has_right_decoder else None
        l2r, r2l = self.model.decoder_log_probs(memory, memory_lengths, l2r_in, lengths, right)
        # position j predicts token j of the hypothesis, position len(hyp) predicts eos
        l2r_score = sequence_log_probs(l2r, shift_left(l2r_in, eos), lengths)
        if r2l is None:
            return l2r_score, np.zeros(n)
        return l2r_score, sequence_log_probs(r2l, shift_left(r2l_in, eos), lengths)

    @torch.inference_mode()
    def attention_beam_search(self, enc, enc_lengths, beam_size: int) -> list[Hypothesis]:
        """WeNet's `attention` mode: enc (B, T, d), enc_lengths (B,) -> best per utterance."""
        return attention_beam_search(
            self.model, self.tensor(enc), self.tensor(enc_lengths), beam_size
        )


def numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().cpu().numpy()


def shift_left(hyps_in: torch.Tensor, eos: int) -> torch.Tensor:
    """Decoder inputs (N, L) = sos + hyp + eos padding -> targets (N, L) = hyp + eos padding."""
    return torch.cat([hyps_in[:, 1:], torch.full_like(hyps_in[:, :1], eos)], dim=1)


def sequence_log_probs(
    log_probs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor
) -> np.ndarray:
    """Sum over positions < length of log_probs (N, L, V) at targets (N, L) -> float64 (N,)."""
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
    valid = torch.arange(targets.size(1), device=targets.device) < lengths.unsqueeze(1)
    return picked.masked_fill(~valid, 0.0).sum(-1).cpu().numpy()


@torch.no_grad()
def attention_beam_search(
    model: U2Model, enc: torch.Tensor, enc_lengths: torch.Tensor, beam_size: int
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
