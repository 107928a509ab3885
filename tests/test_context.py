"""Context graph of hotwords: bonuses earned token by token, taken back on a failed match."""

import numpy as np
import pytest

from u2moe.data.tokenizer import Tokenizer
from u2moe.decode.context import ContextGraph
from u2moe.decode.search import CtcPrefixBeamSearch
from u2moe.errors import UserError


def walk(graph: ContextGraph, tokens: list[int]) -> tuple[float, float]:
    """-> (bonus after the tokens, bonus once the prefix ends there)."""
    state, bonus = graph.root, 0.0
    for token in tokens:
        state, delta = graph.step(state, token)
        bonus += delta
    return bonus, bonus + graph.finish(state)


def test_a_whole_phrase_keeps_its_bonus_and_a_broken_one_gives_it_back():
    graph = ContextGraph([([1, 2, 3], 2.0)])
    assert walk(graph, [1, 2]) == (4.0, 0.0)  # partial: counted while it lasts
    assert walk(graph, [1, 2, 3]) == (6.0, 6.0)
    assert walk(graph, [1, 2, 5]) == (0.0, 0.0)  # broken: taken back
    assert walk(graph, [7, 1, 2, 3, 9]) == (6.0, 6.0)


def test_failure_links_fall_back_to_the_longest_matching_suffix():
    graph = ContextGraph([([1, 2, 3], 1.0), ([2, 4], 5.0)])
    # "1 2" fails on 4 but its suffix "2" continues as "2 4"
    assert walk(graph, [1, 2, 4]) == (10.0, 10.0)
    # "1 1 2 3": the first 1 fails onto the second's match
    assert walk(graph, [1, 1, 2, 3]) == (3.0, 3.0)


def test_phrase_file_scores_and_errors(tmp_path):
    tokenizer = Tokenizer(["<blank>", "<unk>", "▁", *"abcdefg", "<sos/eos>"])
    path = tmp_path / "hot.txt"
    path.write_text("bad :3\n\ncafe\n")
    graph = ContextGraph.from_file(path, tokenizer, score=1.0)
    assert walk(graph, tokenizer.encode("bad"))[1] == 9.0
    assert walk(graph, tokenizer.encode("cafe"))[1] == 4.0
    for text, message in [
        ("xyz\n", "hot.txt:1: 'xyz' has units the model does not know"),
        ("bad :loud\n", "hot.txt:1: ':loud' is not a score"),
        ("\n", "no phrases"),
    ]:
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            ContextGraph.from_file(path, tokenizer, score=1.0)
    with pytest.raises(UserError, match="no such context file"):
        ContextGraph.from_file(tmp_path / "missing.txt", tokenizer, score=1.0)


def frames(*rows: dict[int, float], vocab: int = 8) -> np.ndarray:
    """Log-probs (T, vocab): each row's listed tokens get those probabilities, blank the rest."""
    out = np.full((len(rows), vocab), 1e-6)
    for t, row in enumerate(rows):
        for token, p in row.items():
            out[t, token] = p
        out[t, 0] = 1.0 - sum(row.values())
    return np.log(out)


def test_hotwords_turn_a_close_call_and_cost_nothing_elsewhere():
    # frame 2 hesitates between token 3 (0.45) and the hotword's token 4 (0.40)
    log_probs = frames({2: 0.9}, {3: 0.45, 4: 0.40}, {5: 0.9})
    plain = CtcPrefixBeamSearch(beam_size=4)
    plain.advance(log_probs)
    assert plain.nbest()[0].tokens == [2, 3, 5]
    biased = CtcPrefixBeamSearch(beam_size=4, context=ContextGraph([([2, 4, 5], 1.0)]))
    for t in range(len(log_probs)):  # streamed frame by frame
        biased.advance(log_probs[t : t + 1])
    best = biased.nbest()[0]
    assert best.tokens == [2, 4, 5]
    assert best.score == pytest.approx(plain.nbest()[1].score + 3.0)
    # a graph whose phrase never matches leaves the n-best as it was
    unrelated = CtcPrefixBeamSearch(beam_size=4, context=ContextGraph([([7, 7], 5.0)]))
    unrelated.advance(log_probs)
    assert [(h.tokens, round(h.score, 9)) for h in unrelated.nbest()] == [
        (h.tokens, round(h.score, 9)) for h in plain.nbest()
    ]


def test_a_partial_match_at_the_end_earns_nothing():
    log_probs = frames({2: 0.9}, {4: 0.9})
    search = CtcPrefixBeamSearch(beam_size=3, context=ContextGraph([([2, 4, 5], 1.0)]))
    search.advance(log_probs)
    plain = CtcPrefixBeamSearch(beam_size=3)
    plain.advance(log_probs)
    assert search.nbest()[0].tokens == [2, 4]
    assert search.nbest()[0].score == pytest.approx(plain.nbest()[0].score)
