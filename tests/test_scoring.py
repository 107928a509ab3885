import pytest

from u2moe.decode.scoring import ErrorCounts, char_errors, word_errors


@pytest.mark.parametrize(
    "ref, hyp, expected",
    [
        ("the cat sat", "the cat sat", (0, 0, 0, 3)),
        ("the cat sat", "the bat sat", (1, 0, 0, 3)),
        ("the cat sat", "the sat", (0, 1, 0, 3)),
        ("the cat sat", "the cat sat down", (0, 0, 1, 3)),
        ("a b c d", "  a x c  ", (1, 1, 0, 4)),  # whitespace does not count
        ("", "oh no", (0, 0, 2, 0)),
        ("one two", "", (0, 2, 0, 2)),
    ],
)
def test_word_errors_count_substitutions_deletions_insertions(ref, hyp, expected):
    counts = word_errors(ref, hyp)
    assert (counts.substitutions, counts.deletions, counts.insertions, counts.ref_length) == (
        expected
    )


def test_char_errors_count_the_space_between_words():
    counts = char_errors("ab cd", "abcd")
    assert (counts.deletions, counts.ref_length) == (1, 5)
    assert char_errors("ab cd", "ab  ce").substitutions == 1


def test_corpus_rate_is_total_errors_over_total_reference():
    total = word_errors("a b c d", "a b c d") + word_errors("x y", "x z w")
    assert total == ErrorCounts(substitutions=1, deletions=0, insertions=1, ref_length=6)
    assert total.rate == pytest.approx(2 / 6)
    assert ErrorCounts(insertions=3).rate == 3.0  # empty reference: each insertion counts
    assert total.as_dict()["errors"] == 2
