import itertools
import math
from pathlib import Path

import pytest
import torch

from u2moe.decode.search import CtcPrefixBeamSearch, ctc_greedy_search, ctc_prefix_beam_search
from u2moe.decode.timestamps import ctc_spikes, token_times, word_times

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
