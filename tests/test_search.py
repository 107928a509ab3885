import itertools
import math
from pathlib import Path

import pytest
import torch

from u2moe.backends.torch_backend import TorchBackend, attention_beam_search
from u2moe.commands.verify_wenet import verify
from u2moe.decode.batch import decode_batch
from u2moe.decode.config import DecodeConfig
from u2moe.decode.search import (
    CtcPrefixBeamSearch,
    Hypothesis,
    attention_rescoring,
    ctc_greedy_search,
    ctc_prefix_beam_search,
)
from u2moe.decode.timestamps import ctc_spikes, token_times, word_times
from u2moe.model.config import DecoderConfig, EncoderConfig, ModelConfig
from u2moe.model.io import load_weights
from u2moe.model.u2 import U2Model
from u2moe.model.wenet import config_from_wenet, convert_state_dict

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def collapse(path):
    return tuple(u for i, u in enumerate(path) if u != 0 and (i == 0 or u != path[i - 1]))


def random_log_probs(T, V, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, V, generator=g) * 2).log_softmax(-1)


def brute_force_prefix_scores(log_probs):
    """log P(prefix) summed over every alignment: the exact CTC probability of each label."""
    T, V = log_probs.shape
    totals = {}
    for path in itertools.product(range(V), repeat=T):
        logp = sum(log_probs[t, u].item() for t, u in enumerate(path))
        key = collapse(path)
        totals[key] = totals.get(key, 0.0) + math.exp(logp)
    return {k: math.log(v) for k, v in totals.items()}


def test_ctc_greedy_search_merges_repeats_and_drops_blanks():
    path = [0, 3, 3, 0, 3, 2, 2, 0, 1]
    log_probs = torch.full((1, 12, 5), -10.0)
    log_probs[0, torch.arange(9), torch.tensor(path)] = -0.1
    (hyp,) = ctc_greedy_search(log_probs, torch.tensor([9]))  # the 3 padded frames are ignored
    assert hyp.tokens == [3, 3, 2, 1]
    assert hyp.score == pytest.approx(-0.9)


def test_prefix_beam_without_pruning_equals_brute_force():
    log_probs = random_log_probs(4, 3, seed=0)
    expected = brute_force_prefix_scores(log_probs)
    (nbest,) = ctc_prefix_beam_search(log_probs[None], torch.tensor([4]), beam_size=64)
    assert {tuple(h.tokens) for h in nbest} == set(expected)
    for hyp in nbest:
        assert hyp.score == pytest.approx(expected[tuple(hyp.tokens)], abs=1e-9)
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)


def test_prefix_beam_is_batched_per_utterance_and_streams():
    a, b = random_log_probs(9, 6, seed=1), random_log_probs(6, 6, seed=2)
    batch = torch.stack([a, torch.cat([b, torch.zeros(3, 6)])])
    nbests = ctc_prefix_beam_search(batch, torch.tensor([9, 6]), beam_size=3)
    (alone,) = ctc_prefix_beam_search(b[None], torch.tensor([6]), beam_size=3)
    assert nbests[1] == alone  # padding frames are not searched
    search = CtcPrefixBeamSearch(beam_size=3)
    for piece in (a[:2], a[2:2], a[2:7], a[7:]):
        search.advance(piece)
    assert search.nbest() == nbests[0]
    assert len(nbests[0]) == 3


def fixture(name):
    path = FIXTURES / f"wenet_u2pp_{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", ["dense", "moe"])
def test_ctc_searches_match_wenet_fixture(name):
    out = fixture(name)["outputs"]
    log_probs, lengths = out["ctc_log_probs"], out["encoder_full_lengths"]
    beam = fixture(name)["outputs"]["decode_full_params"]["beam_size"]
    greedy = ctc_greedy_search(log_probs, lengths)
    nbests = ctc_prefix_beam_search(log_probs, lengths, beam)
    for i in range(len(lengths)):
        assert greedy[i].tokens == out["decode_full"]["ctc_greedy_search"][i]["tokens"]
        ref = out["decode_full"]["ctc_prefix_beam_search"][i]
        assert tuple(nbests[i][0].tokens) == tuple(ref["tokens"])
        assert nbests[i][0].score == pytest.approx(ref["score"], rel=1e-6)


def test_ctc_spikes_follow_the_best_alignment():
    log_probs = random_log_probs(6, 4, seed=3)
    tokens = [2, 2, 3]
    best = max(
        (p for p in itertools.product(range(4), repeat=6) if collapse(p) == tuple(tokens)),
        key=lambda p: sum(log_probs[t, u].item() for t, u in enumerate(p)),
    )
    spikes = ctc_spikes(log_probs, tokens)
    # each spike lies in its token's segment of the best path, at that segment's peak
    segments = [[t for t in range(6) if best[t] == u] for u in (2, 3)]
    for spike, token in zip(spikes, tokens, strict=True):
        assert best[spike] == token
    assert spikes[0] < spikes[1] < spikes[2]
    assert spikes[2] == max(segments[1], key=lambda t: log_probs[t, 3].item())
    assert ctc_spikes(log_probs[:2], tokens) is None  # "2 - 2 3" needs 4 frames
    assert ctc_spikes(log_probs, []) == []


def test_token_times_split_close_neighbours_at_the_midpoint():
    times = token_times([0, 2, 20], frame_shift=0.04, duration=0.85, gap=0.1)
    assert times == [(0.0, 0.04), (0.04, 0.18), (0.7, 0.85)]


def test_word_times_group_pieces_at_word_boundaries():
    times = [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5)]
    bpe = word_times(["▁he", "llo", "▁wor", "ld", "▁a"], times)
    assert [(w.text, w.start, w.end) for w in bpe] == [
        ("hello", 0.0, 0.2),
        ("world", 0.2, 0.4),
        ("a", 0.4, 0.5),
    ]
    chars = word_times(["h", "i", "▁", "y", "o"], times)
    assert [(w.text, w.start, w.end) for w in chars] == [("hi", 0.0, 0.2), ("yo", 0.3, 0.5)]


def tiny_model(vocab_size=12, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab_size,
        encoder=EncoderConfig(d_model=32, n_heads=2, d_ff=48, n_layers=2, kernel_size=5),
        decoder=DecoderConfig(n_heads=2, d_ff=48, n_layers=2, n_r2l_layers=1),
    )
    return U2Model(cfg).eval()


def test_attention_rescoring_combines_ctc_and_both_decoders():
    model = tiny_model()
    enc = torch.randn(2, 9, 32)
    enc_lengths = torch.tensor([9, 6])
    nbests = [
        [Hypothesis([3, 4, 4], -1.0), Hypothesis([5], -2.5), Hypothesis([], -9.0)],
        [Hypothesis([7, 2], -0.5)],
    ]
    ctc_weight, reverse_weight = 0.3, 0.4
    got = attention_rescoring(
        TorchBackend(model), nbests, enc, enc_lengths, ctc_weight, reverse_weight
    )
    eos = model.eos
    for b, nbest in enumerate(nbests):
        expected = []
        for hyp in nbest:  # one hypothesis at a time, unpadded
            tokens = hyp.tokens
            l2r, r2l = model.decoder_log_probs(
                enc[b : b + 1, : enc_lengths[b]],
                enc_lengths[b : b + 1],
                torch.tensor([[model.sos, *tokens]]),
                torch.tensor([len(tokens) + 1]),
                torch.tensor([[model.sos, *tokens[::-1]]]),
            )
            l2r_score = sum(l2r[0, j, u].item() for j, u in enumerate([*tokens, eos]))
            r2l_score = sum(r2l[0, j, u].item() for j, u in enumerate([*tokens[::-1], eos]))
            att = (1 - reverse_weight) * l2r_score + reverse_weight * r2l_score
            expected.append(att + ctc_weight * hyp.score)
        best = max(range(len(nbest)), key=lambda i: expected[i])
        assert got[b].tokens == nbest[best].tokens
        assert got[b].score == pytest.approx(expected[best], abs=1e-4)


def test_attention_beam_of_one_is_greedy_decoding():
    model = tiny_model(seed=1)
    enc = torch.randn(2, 7, 32)
    enc_lengths = torch.tensor([7, 5])
    got = attention_beam_search(model, enc, enc_lengths, beam_size=1)
    for b in range(2):
        tokens, score = [], 0.0
        for _ in range(7):  # at most T (the longest utterance) steps, as WeNet
            l2r, _ = model.decoder_log_probs(
                enc[b : b + 1],
                enc_lengths[b : b + 1],
                torch.tensor([[model.sos, *tokens]]),
                torch.tensor([len(tokens) + 1]),
            )
            logp, token = l2r[0, -1].max(dim=-1)
            score += logp.item()
            if token.item() == model.eos:
                break
            tokens.append(token.item())
        assert got[b].tokens == tokens
        assert got[b].score == pytest.approx(score, abs=1e-4)


def wenet_model(name):
    data = fixture(name)
    cfg = config_from_wenet(data["config"])
    model = U2Model(cfg)
    load_weights(model, convert_state_dict(data["state_dict"], cfg), name)
    return data, model.eval()


@pytest.mark.parametrize("name", ["dense", "moe"])
@pytest.mark.parametrize("result, chunk_size", [("decode_full", -1), ("decode_chunk4", 4)])
def test_every_mode_matches_wenet_decoding(name, result, chunk_size):
    data, model = wenet_model(name)
    expected = data["outputs"][result]
    params = data["outputs"]["decode_full_params"]
    cfg = DecodeConfig(modes=list(expected), chunk_size=chunk_size, **params)
    decoded = decode_batch(
        TorchBackend(model), data["inputs"]["feats"], data["inputs"]["feats_lengths"], cfg
    )
    for mode, refs in expected.items():
        for hyp, ref in zip(decoded.hyps[mode], refs, strict=True):
            assert list(hyp.tokens) == list(ref["tokens"]), (mode, ref)
            if mode in ("ctc_prefix_beam_search", "attention_rescoring"):  # WeNet's scores
                assert hyp.score == pytest.approx(ref["score"], rel=1e-4)


def test_verify_wenet_checks_every_decoding_result():
    raw = fixture("dense")
    raw["outputs"]["decode_chunk4"]["attention_rescoring"][1]["tokens"] = (5, 5)
    results, unchecked = verify(raw, "dense")
    by_name = {r.name: r for r in results}
    modes = ["ctc_greedy_search", "ctc_prefix_beam_search", "attention", "attention_rescoring"]
    assert all(by_name[f"decode_full.{m}[{i}]"].ok for m in modes for i in (0, 1))
    assert by_name["decode_chunk4.attention_rescoring[0]"].ok
    assert not by_name["decode_chunk4.attention_rescoring[1]"].ok
    assert not {"decode_full", "decode_full_params", "decode_chunk4"} & set(unchecked)
