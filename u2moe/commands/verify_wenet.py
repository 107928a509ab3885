"""`u2moe verify-wenet FIXTURE.pt`: check u2moe against outputs of WeNet's own code.

A fixture (see shared/fixtures/README.md) holds a WeNet train.yaml as a dict (`config`),
a WeNet state dict, inputs and WeNet's outputs. The model is built through the importer
(`u2moe.model.wenet.build_model`), every output the fixture holds is recomputed by a
named check, and one line per output shows the largest difference and its tolerance.
The exit status is 1 when any output is out of tolerance.

To check another output, write `def check_<name>(fx: Fixture) -> list[Result]` and add
it to CHECKS with the output keys it consumes.
"""

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from u2moe.backends.torch_backend import TorchBackend
from u2moe.decode.batch import decode_batch
from u2moe.decode.config import DecodeConfig
from u2moe.decode.search import NBEST_MODES
from u2moe.errors import UserError
from u2moe.model.io import torch_load
from u2moe.model.u2 import U2Model, decoder_inputs
from u2moe.model.wenet import build_model, cmvn_from_stats

# Between two correct fp32 implementations (shared/fixtures/README.md).
TENSOR_ATOL = 1e-5
# CTC log-probs of a peaky CTC layer reach |25|: the encoder's ~2e-6 differences grow
# through ctc_lo to ~1e-5, so these get twice the tensor tolerance.
CTC_ATOL = 2e-5
LOSS_RTOL = 1e-4


@dataclass
class Result:
    """One compared output: ok when diff <= tolerance (kind: 'abs' or 'rel')."""

    name: str
    diff: float
    tolerance: float
    kind: str = "abs"
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.diff <= self.tolerance  # False for NaN

    def line(self) -> str:
        status = "ok" if self.ok else "FAIL"
        note = f"  ({self.note})" if self.note else ""
        diff = f"max {self.kind} diff {self.diff:.3e}  tol {self.tolerance:.0e}"
        return f"{self.name:<28} {diff}  {status}{note}"


@dataclass
class Fixture:
    """A loaded fixture and the u2moe model built from it."""

    path: str
    config: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    model: U2Model
    raw: dict[str, Any]
    _encoded: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def encode(self, chunk_size: int = -1, num_left_chunks: int = -1):
        """Encoder output of the fixture's batch, cached: (enc (B, T', d), lengths (B,))."""
        key = (chunk_size, num_left_chunks)
        if key not in self._encoded:
            feats, lengths = self.inputs["feats"], self.inputs["feats_lengths"]
            self._encoded[key] = self.model.encode(feats, lengths, chunk_size, num_left_chunks)
        return self._encoded[key]


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def rel_diff(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    a, b = float(a), float(b)
    return 0.0 if a == b else abs(a - b) / max(abs(b), 1e-12)


def _real_frames(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The frames of (B, T, ...) within each utterance's length, concatenated."""
    return torch.cat([x[b, : int(n)] for b, n in enumerate(lengths)])


def check_cmvn(fx: Fixture) -> list[Result]:
    """WeNet's global_cmvn JSON, converted by u2moe, against the checkpoint's buffers."""
    stats = (fx.raw.get("cmvn") or {}).get("json")
    if stats is None:
        return []
    mean, istd = cmvn_from_stats(
        stats["mean_stat"], stats["var_stat"], stats["frame_num"], f"{fx.path}: cmvn.json"
    )
    cmvn = fx.model.encoder.global_cmvn
    diff = max(max_abs_diff(mean, cmvn.mean), max_abs_diff(istd, cmvn.istd))
    return [Result("cmvn", diff, TENSOR_ATOL)]


def _check_encoder(name: str, chunk_size: int, num_left_chunks: int):
    def check(fx: Fixture) -> list[Result]:
        enc, lengths = fx.encode(chunk_size, num_left_chunks)
        expected_lengths = fx.outputs.get("encoder_full_lengths", lengths)
        if not torch.equal(lengths, expected_lengths):
            return [Result(name, math.inf, TENSOR_ATOL, note=f"lengths {lengths.tolist()}")]
        diff = max_abs_diff(
            _real_frames(enc, lengths), _real_frames(fx.outputs[name], expected_lengths)
        )
        return [Result(name, diff, TENSOR_ATOL)]

    return check


def _check_stream(name: str, chunk_size: int, num_left_chunks: int):
    def check(fx: Fixture) -> list[Result]:
        feats = fx.inputs["feats"][:1, : int(fx.inputs["feats_lengths"][0])]
        out, _ = fx.model.encoder.forward_chunk_by_chunk(feats, chunk_size, num_left_chunks)
        return [Result(name, max_abs_diff(out, fx.outputs[name]), TENSOR_ATOL)]

    return check


def check_forward_chunk_steps(fx: Fixture) -> list[Result]:
    """WeNet's forward_chunk calls from empty caches: outputs and both caches, per step."""
    feats = fx.inputs["feats"][:1]
    att_cache = cnn_cache = feats.new_zeros(0, 0, 0, 0)
    results = []
    for i, step in enumerate(fx.outputs["forward_chunk_steps"]):
        out, att_cache, cnn_cache = fx.model.encoder.forward_chunk(
            feats[:, step["start"] : step["end"]], step["offset"], -1, att_cache, cnn_cache
        )
        for part, value in (("out", out), ("att_cache", att_cache), ("cnn_cache", cnn_cache)):
            diff = max_abs_diff(value, step[part])
            results.append(Result(f"forward_chunk[{i}].{part}", diff, TENSOR_ATOL))
    return results


def check_ctc_log_probs(fx: Fixture) -> list[Result]:
    enc, lengths = fx.encode()
    diff = max_abs_diff(
        _real_frames(fx.model.ctc_log_probs(enc), lengths),
        _real_frames(fx.outputs["ctc_log_probs"], lengths),
    )
    return [Result("ctc_log_probs", diff, CTC_ATOL)]


def check_decoder(fx: Fixture) -> list[Result]:
    """Both decoders on WeNet's hypotheses of utterance 0, inputs built by u2moe."""
    ref = fx.outputs["decoder"]
    model = fx.model
    hyps_in, hyps_lengths, r2l_hyps_in = decoder_inputs(ref["hyps"], model.sos, model.eos)
    if not (
        torch.equal(hyps_in, ref["hyps_pad_with_sos"])
        and torch.equal(hyps_lengths, ref["hyps_lens_with_sos"])
    ):
        return [Result("decoder_inputs", math.inf, 0, note="padded hypotheses differ")]
    enc, lengths = fx.encode()
    n = len(ref["hyps"])
    length = int(lengths[0])
    l2r, r2l = model.decoder_log_probs(
        enc[:1, :length].expand(n, -1, -1), lengths[:1].expand(n), hyps_in, hyps_lengths,
        r2l_hyps_in if model.decoder.right_decoder is not None else None,
    )  # fmt: skip
    results = [
        Result("decoder_l2r_log_probs", max_abs_diff(l2r, ref["l2r_log_probs"]), TENSOR_ATOL)
    ]
    if r2l is not None and ref.get("reverse_weight", 1.0) > 0 and "r2l_log_probs" in ref:
        diff = max_abs_diff(r2l, ref["r2l_log_probs"])
        results.append(Result("decoder_r2l_log_probs", diff, TENSOR_ATOL))
    return results


def _check_decode(name: str, chunk_size: int):
    """Every decoding mode the fixture holds: identical tokens, and WeNet's score where it
    reports one (CTC prefix beam search and attention rescoring)."""

    def check(fx: Fixture) -> list[Result]:
        expected = fx.outputs[name]
        params = fx.outputs.get("decode_full_params", {})
        cfg = DecodeConfig(modes=list(expected), chunk_size=chunk_size, **params)
        feats, lengths = fx.inputs["feats"], fx.inputs["feats_lengths"]
        decoded = decode_batch(TorchBackend(fx.model), feats, lengths, cfg)
        results = []
        for mode, refs in expected.items():
            for i, (hyp, ref) in enumerate(zip(decoded.hyps[mode], refs, strict=True)):
                label = f"{name}.{mode}[{i}]"
                if list(hyp.tokens) != list(ref["tokens"]):
                    results.append(Result(label, math.inf, LOSS_RTOL, "rel", "tokens differ"))
                elif mode in NBEST_MODES:
                    diff = rel_diff(hyp.score, ref["score"])
                    results.append(Result(label, diff, LOSS_RTOL, "rel", "same tokens; score"))
                else:
                    note = "same tokens; WeNet reports no score"
                    results.append(Result(label, 0.0, LOSS_RTOL, "rel", note))
        return results

    return check


def check_losses(fx: Fixture) -> list[Result]:
    """U2Model's losses with the fixture's loss weights, in eval mode (full context)."""
    ref = fx.outputs["losses"]
    out = fx.model(
        fx.inputs["feats"], fx.inputs["feats_lengths"], ref["target"], ref["target_lengths"]
    )
    pairs = [("loss_ctc", "loss_ctc"), ("loss_att", "loss_att"), ("loss", "loss")]
    pairs.append(("accuracy", "att_accuracy"))
    return [
        Result(f"losses.{ours}", rel_diff(out[ours], ref[theirs]), LOSS_RTOL, kind="rel")
        for ours, theirs in pairs
        if theirs in ref
    ]


# (output keys consumed, check): a check runs when the fixture holds the first key (or,
# with no keys, always).
CHECKS: list[tuple[tuple[str, ...], Callable[[Fixture], list[Result]]]] = [
    ((), check_cmvn),
    (("encoder_full", "encoder_full_mask", "encoder_full_lengths"),
     _check_encoder("encoder_full", -1, -1)),
    (("encoder_chunk4", "encoder_chunk4_mask"), _check_encoder("encoder_chunk4", 4, -1)),
    (("encoder_chunk4_left2",), _check_encoder("encoder_chunk4_left2", 4, 2)),
    (("stream0_chunk4",), _check_stream("stream0_chunk4", 4, -1)),
    (("stream0_chunk4_left2",), _check_stream("stream0_chunk4_left2", 4, 2)),
    (("forward_chunk_steps",), check_forward_chunk_steps),
    (("ctc_log_probs",), check_ctc_log_probs),
    (("decoder",), check_decoder),
    (("losses",), check_losses),
    (("decode_full", "decode_full_params"), _check_decode("decode_full", -1)),
    (("decode_chunk4",), _check_decode("decode_chunk4", 4)),
]  # fmt: skip


def load_fixture(path: str | Path) -> dict[str, Any]:
    """Read a fixture file, or a one-line UserError."""
    raw = torch_load(path, "fixture file")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a fixture (expected a mapping)")
    for key in ("config", "state_dict", "inputs", "outputs"):
        if not isinstance(raw.get(key), dict):
            raise UserError(f"{path}: not a fixture (no '{key}' mapping)")
    for key in ("feats", "feats_lengths"):
        if not torch.is_tensor(raw["inputs"].get(key)):
            raise UserError(f"{path}: inputs.{key} is missing or not a tensor")
    return raw


def verify(raw: dict[str, Any], path: str = "fixture") -> tuple[list[Result], list[str]]:
    """Run every check whose output the fixture holds -> (results, unchecked output keys)."""
    model = build_model(raw["config"], raw["state_dict"], where=f"{path}: state_dict")
    fx = Fixture(path, raw["config"], raw["inputs"], raw["outputs"], model, raw)
    results, consumed = [], set()
    with torch.no_grad():
        for keys, check in CHECKS:
            if keys and keys[0] not in fx.outputs:
                continue
            consumed.update(keys)
            try:
                results.extend(check(fx))
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                what = keys[0] if keys else check.__name__
                raise UserError(
                    f"{path}: malformed fixture data for {what} ({type(e).__name__}: {e})"
                ) from None
    unchecked = [key for key in fx.outputs if key not in consumed]
    return results, unchecked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixture", help="a .pt fixture made with WeNet's code")


def main(args: argparse.Namespace) -> int:
    results, unchecked = verify(load_fixture(args.fixture), args.fixture)
    print(f"{args.fixture}: {len(results)} comparisons")
    for result in results:
        print(result.line())
    for key in unchecked:
        print(f"{key:<28} not checked (no u2moe check for it)")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"FAILED: {len(failed)} out of tolerance: {', '.join(failed)}")
        return 1
    print("all outputs within tolerance")
    return 0
