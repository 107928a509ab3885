"""U2++ model: Conformer encoder, CTC head and bidirectional attention decoder, with losses.

Token ids: blank 0, unk 1, sos = eos = vocab_size - 1; targets are padded with -1.

loss = ctc_weight * CTC + (1 - ctc_weight) * ((1 - reverse_weight) * L2R + reverse_weight * R2L)

The attention losses use WeNet's label smoothing (KL divergence to the smoothed target,
normalized by batch size, or by token count with length_normalized_loss); CTC is summed
and divided by batch size. With an MoE FFN and aux_loss_weight > 0, a Switch-style
load-balancing loss over the real (non-padding) frames is added; it is read from the
routing records the MoE layers leave (`u2moe.model.moe.RoutingRecord`), which `forward`
marks with the real frames of the encoder and of the decoder inputs.
"""

import torch
import torch.nn.functional as F
from torch import nn

from u2moe.model.config import ModelConfig
from u2moe.model.ctc import CTC
from u2moe.model.decoder import BiTransformerDecoder
from u2moe.model.encoder import ConformerEncoder
from u2moe.model.mask import make_pad_mask
from u2moe.model.moe import balance_loss, mark_real_frames, moe_layers

IGNORE_ID = -1


class U2Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set to build a model")
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.sos = self.eos = cfg.vocab_size - 1
        self.encoder = ConformerEncoder(cfg)
        self.decoder = BiTransformerDecoder(cfg.vocab_size, cfg.encoder.d_model, cfg.decoder)
        self.ctc = CTC(cfg.vocab_size, cfg.encoder.d_model)

    def set_cmvn(self, mean: torch.Tensor, istd: torch.Tensor) -> None:
        """Global CMVN applied to raw fbank inside the encoder: mean, istd (input_dim,)."""
        self.encoder.global_cmvn.set_stats(mean, istd)

    def encode(
        self,
        feats: torch.Tensor,
        feats_lengths: torch.Tensor,
        chunk_size: int = -1,
        num_left_chunks: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw fbank (B, T, 80), (B,) -> (enc (B, T', d), enc_lengths (B,)).

        chunk_size <= 0: full context; > 0: chunk masks of that many encoder frames with
        num_left_chunks chunks of left context (-1: all). Training mode draws chunks from
        cfg.chunk instead.
        """
        enc, enc_mask = self.encoder(feats, feats_lengths, chunk_size, num_left_chunks)
        return enc, enc_mask.squeeze(1).sum(dim=1)

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """enc (B, T', d) -> CTC log-probs (B, T', V)."""
        return self.ctc.log_probs(enc)

    def decoder_log_probs(
        self,
        enc: torch.Tensor,
        enc_lengths: torch.Tensor,
        hyps_in: torch.Tensor,
        hyps_lengths: torch.Tensor,
        r2l_hyps_in: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score hypotheses with both decoders (see `decoder_inputs` to build the inputs).

        enc (N, T', d) repeated per hypothesis, enc_lengths (N,), hyps_in (N, L) with sos
        first and padded with eos, hyps_lengths (N,) counting sos, r2l_hyps_in (N, L) or
        None -> (L2R log-probs (N, L, V), R2L log-probs (N, L, V) or None).
        """
        memory_mask = ~make_pad_mask(enc_lengths, enc.size(1)).unsqueeze(1)
        l2r, r2l = self.decoder(enc, memory_mask, hyps_in, hyps_lengths, r2l_hyps_in)
        return l2r.log_softmax(dim=-1), None if r2l is None else r2l.log_softmax(dim=-1)

    def forward(
        self,
        feats: torch.Tensor,
        feats_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        return_encoded: bool = False,
    ) -> dict[str, torch.Tensor]:
        """feats (B, T, 80) raw fbank, feats_lengths (B,), targets (B, L) padded with -1,
        target_lengths (B,) -> {"loss", "loss_ctc", "loss_att", "accuracy"} (+ "loss_aux").

        A part whose weight is 0 (ctc_weight 0 or 1) is still reported, computed without
        gradient. accuracy: L2R next-token accuracy on the real tokens and eos.
        return_encoded: also "enc" (B, T', d) and "enc_lengths" (B,), for a CTC search on
        the same encoder pass (the trainer's dev WER).
        """
        cfg = self.cfg
        enc, enc_lengths = self.encode(feats, feats_lengths)
        mark_real_frames(self.encoder, enc_lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.ctc_weight > 0):
            loss_ctc = self.ctc.loss(enc, enc_lengths, targets, target_lengths)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.ctc_weight < 1):
            loss_att, accuracy = self.attention_loss(enc, enc_lengths, targets, target_lengths)
        mark_real_frames(self.decoder, target_lengths + 1)  # sos + tokens
        loss = cfg.ctc_weight * loss_ctc + (1 - cfg.ctc_weight) * loss_att
        out = {"loss": loss, "loss_ctc": loss_ctc, "loss_att": loss_att, "accuracy": accuracy}
        if return_encoded:
            out.update(enc=enc, enc_lengths=enc_lengths)
        weights = [
            (self.encoder, cfg.encoder.ffn.aux_loss_weight),
            (self.decoder, cfg.decoder.ffn.aux_loss_weight),
        ]
        aux = [w * balance_loss(part) for part, w in weights if w > 0 and moe_layers(part)]
        if aux:
            out["loss_aux"] = sum(aux)
            out["loss"] = loss + out["loss_aux"]
        return out

    def attention_loss(
        self,
        enc: torch.Tensor,
        enc_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Label-smoothed L2R (and R2L) decoder loss and L2R accuracy -> (loss, accuracy)."""
        cfg = self.cfg
        ys_in, ys_out = add_sos_eos(targets, self.sos, self.eos)
        ys_in_lengths = target_lengths + 1
        use_r2l = cfg.reverse_weight > 0
        r2l_ys_in = r2l_ys_out = None
        if use_r2l:
            reversed_targets = reverse_padded(targets, target_lengths, IGNORE_ID)
            r2l_ys_in, r2l_ys_out = add_sos_eos(reversed_targets, self.sos, self.eos)
        memory_mask = ~make_pad_mask(enc_lengths, enc.size(1)).unsqueeze(1)
        l2r, r2l = self.decoder(enc, memory_mask, ys_in, ys_in_lengths, r2l_ys_in)
        smoothing, by_tokens = cfg.lsm_weight, cfg.length_normalized_loss
        loss = label_smoothing_loss(l2r, ys_out, smoothing, by_tokens)
        if use_r2l:
            r2l_loss = label_smoothing_loss(r2l, r2l_ys_out, smoothing, by_tokens)
            loss = (1 - cfg.reverse_weight) * loss + cfg.reverse_weight * r2l_loss
        return loss, token_accuracy(l2r, ys_out)


def add_sos_eos(targets: torch.Tensor, sos: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """targets (B, L) padded with -1 -> decoder input (B, L+1) = sos + y, padded with eos,
    and decoder target (B, L+1) = y + eos, padded with -1 (WeNet's add_sos_eos)."""
    real = targets != IGNORE_ID
    lengths = real.sum(dim=1, keepdim=True)
    positions = torch.arange(targets.size(1) + 1, device=targets.device).unsqueeze(0)
    padded = F.pad(targets.masked_fill(~real, eos), (0, 1), value=eos)
    ys_in = torch.cat([targets.new_full((targets.size(0), 1), sos), padded[:, :-1]], dim=1)
    ys_out = padded.masked_fill(positions > lengths, IGNORE_ID)
    return ys_in, ys_out


def reverse_padded(tokens: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """Reverse the first lengths[b] tokens of each row; positions past them become `pad`.

    tokens (B, L), lengths (B,) -> (B, L). E.g. [[1, 2, 3], [4, 5, -1]], lengths [3, 2]
    -> [[3, 2, 1], [5, 4, pad]].
    """
    positions = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0)
    real = positions < lengths.unsqueeze(1)
    index = (lengths.unsqueeze(1) - 1 - positions).clamp(min=0)
    return torch.gather(tokens, 1, index).masked_fill(~real, pad)


def decoder_inputs(
    hyps: list[list[int]], sos: int, eos: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """N hypotheses (token ids, no sos/eos) -> the inputs of `U2Model.decoder_log_probs`:
    hyps_in (N, L+1) = sos + hyp padded with eos, hyps_lengths (N,) = len + 1, and
    r2l_hyps_in (N, L+1) = sos + reversed hyp padded with eos (as WeNet's rescoring)."""
    lengths = torch.tensor([len(h) for h in hyps], dtype=torch.long, device=device)
    width = max(1, int(lengths.max())) if hyps else 1
    tokens = torch.full((len(hyps), width), IGNORE_ID, dtype=torch.long, device=device)
    for i, hyp in enumerate(hyps):
        tokens[i, : len(hyp)] = torch.tensor(hyp, dtype=torch.long)
    hyps_in, _ = add_sos_eos(tokens, sos, eos)
    r2l_hyps_in, _ = add_sos_eos(reverse_padded(tokens, lengths, IGNORE_ID), sos, eos)
    return hyps_in, lengths + 1, r2l_hyps_in


def label_smoothing_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float, normalize_by_tokens: bool
) -> torch.Tensor:
    """KL(smoothed target || softmax(logits)) summed over real tokens (WeNet's loss).

    logits (B, L, V), target (B, L) with -1 at padding. The true token gets 1 - smoothing,
    every other token smoothing / (V - 1). Divided by the number of real tokens, or by
    the batch size when normalize_by_tokens is False.
    """
    vocab = logits.size(-1)
    log_probs = logits.float().log_softmax(dim=-1).flatten(0, 1)  # (B*L, V)
    target = target.flatten()
    real = target != IGNORE_ID
    off_value = smoothing / (vocab - 1)
    true_dist = torch.full_like(log_probs, off_value)
    true_dist.scatter_(1, target.clamp(min=0).unsqueeze(1), 1.0 - smoothing)
    kl = F.kl_div(log_probs, true_dist, reduction="none").sum(dim=1)
    denominator = real.sum() if normalize_by_tokens else logits.size(0)
    return kl.masked_fill(~real, 0.0).sum() / denominator


def token_accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of real positions (target != -1) where argmax(logits) is the target."""
    real = target != IGNORE_ID
    correct = (logits.argmax(dim=-1) == target) & real
    return (correct.sum() / real.sum().clamp(min=1)).detach()
