"""Context graph of hotwords: bonuses earned token by token, taken back on a failed match."""

import pytest

from u2moe.data.tokenizer import Tokenizer
from u2moe.decode.context import ContextGraph
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
