import math

import pytest
import torch

from u2moe.data.config import TokenizerConfig
from u2moe.data.tokenizer import Tokenizer, train_tokenizer
from u2moe.decode import lexicon
from u2moe.decode.lexicon import LexiconSearch, build_lm
from u2moe.decode.search import ctc_greedy_search
from u2moe.errors import UserError

LETTERS = list("abcdeghnorst")
UNITS = ["<blank>", "<unk>", *LETTERS, "\u2581", "<sos/eos>"]
SENTENCES = ["the cat sat", "the cat sat on the rat", "the dog sat", "a cab ran"] * 3
# as "a cab ran" is in the text, "a" is a word, but "n" and "e" alone are not
SENTENCES.append("a cat")


def emissions(tokenizer, frames, floor=1e-4):
    """Log-probs (1, T, V): each frame a {unit: probability} (the rest shared by `floor`),
    with a blank frame after each."""
    rows = []
    for frame in frames:
        for dist in (frame, {"<blank>": 1.0}):
            row = torch.full((tokenizer.vocab_size,), floor)
            for unit, p in dist.items():
                row[tokenizer.units.index(unit)] = p
            rows.append(row / row.sum())
    return torch.stack(rows).log()[None]


def spelled(text):
    return [{"\u2581" if ch == " " else ch: 1.0} for ch in text]


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    tokenizer = Tokenizer(UNITS)
    summary = build_lm(SENTENCES, tokenizer, out)
    assert summary["words"] == 9 and summary["sentences"] == len(SENTENCES)
    return tokenizer, out


def decode(tokenizer, lm_dir, log_probs, **options):
    search = LexiconSearch(lm_dir, tokenizer, **options)
    return tokenizer.decode(search(log_probs, torch.tensor([log_probs.size(1)]))[0].tokens)


def test_a_misspelled_word_becomes_the_known_word(char_lm):
    tokenizer, lm_dir = char_lm
    frames = spelled("tha cat")  # "tha" is no word: the lexicon has "the" and "a"
    frames[2] = {"a": 0.6, "e": 0.4}
    log_probs = emissions(tokenizer, frames)
    greedy = ctc_greedy_search(log_probs, torch.tensor([log_probs.size(1)]))[0]
    assert tokenizer.decode(greedy.tokens) == "tha cat"
    assert decode(tokenizer, lm_dir, log_probs) == "the cat"


def test_the_word_lm_chooses_between_words_that_sound_alike(char_lm):
    tokenizer, lm_dir = char_lm
    frames = spelled("the cat sat")
    frames[6] = {"b": 0.55, "t": 0.45}  # acoustically "cab", which the text has only after "a"
    log_probs = emissions(tokenizer, frames)
    assert decode(tokenizer, lm_dir, log_probs, lm_weight=0.0, word_score=0.0) == "the cab sat"
    assert decode(tokenizer, lm_dir, log_probs) == "the cat sat"


def test_word_pieces_are_spelled_without_separators(tmp_path):
    tokenizer = train_tokenizer(SENTENCES, TokenizerConfig(type="bpe", vocab_size=20), tmp_path)
    build_lm(SENTENCES, tokenizer, tmp_path / "lm")
    ids = tokenizer.encode("the dog sat on the rat")
    frames = [{tokenizer.units[i]: 1.0} for i in ids]
    assert decode(tokenizer, tmp_path / "lm", emissions(tokenizer, frames)) == (
        "the dog sat on the rat"
    )


def test_an_empty_utterance_gives_an_empty_hypothesis(char_lm):
    tokenizer, lm_dir = char_lm
    search = LexiconSearch(lm_dir, tokenizer)
    [hyp] = search(torch.zeros(1, 3, tokenizer.vocab_size), torch.tensor([0]))
    assert hyp.tokens == [] and hyp.score == -math.inf


def test_a_model_with_other_units_is_refused(char_lm):
    _, lm_dir = char_lm
    other = Tokenizer([*UNITS[:-2], "z", *UNITS[-2:]])
    with pytest.raises(UserError, match="other units than the model"):
        LexiconSearch(lm_dir, other)


def test_a_broken_lm_directory_is_one_line_error(char_lm, tmp_path):
    tokenizer, lm_dir = char_lm
    with pytest.raises(UserError, match="no lexicon.txt"):
        LexiconSearch(tmp_path, tokenizer)
    for name in ("lexicon.txt", "lm.arpa", "units.txt"):
        (tmp_path / name).write_bytes((lm_dir / name).read_bytes())
    (tmp_path / "lm.arpa").write_text("not an arpa file\n")
    with pytest.raises(UserError, match="not a readable ARPA file"):
        LexiconSearch(tmp_path, tokenizer)
    (tmp_path / "lm.arpa").write_bytes((lm_dir / "lm.arpa").read_bytes())
    for bad in ("zoo z o o", "", "cat"):
        (tmp_path / "lexicon.txt").write_text(f"cat c a t\n{bad}\n")
        with pytest.raises(UserError, match="lexicon.txt:2: expected a word and its known"):
            LexiconSearch(tmp_path, tokenizer)


def test_building_needs_irstlm_and_some_text(monkeypatch, tmp_path):
    tokenizer = Tokenizer(UNITS)
    with pytest.raises(UserError, match="no sentence to build"):
        build_lm(["", "zzz"], tokenizer, tmp_path)  # "z" is no unit: unspellable
    # "doze" is unspellable, and its sentence leaves "cod" out of the lexicon too
    summary = build_lm(["the cat", "doze cod"], tokenizer, tmp_path / "some")
    assert (summary["words"], summary["dropped"]) == (2, 1)
    assert (tmp_path / "some" / "lexicon.txt").read_text() == "the t h e\ncat c a t\n"
    monkeypatch.setattr(lexicon.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="irstlm not found"):
        build_lm(SENTENCES, tokenizer, tmp_path)
    assert not (tmp_path / "lm.arpa").exists()  # nothing half-written


def test_lm_command_names_a_missing_text_or_units(char_lm, tmp_path, capsys):
    from u2moe.cli import main

    _, lm_dir = char_lm  # holds units.txt: usable as --units
    args = ["lm", "--units", str(lm_dir), "--out", str(tmp_path / "lm")]
    assert main([*args, "--text", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file or directory" in capsys.readouterr().err
    (tmp_path / "text.txt").write_text("the cat sat\n\na cab\n")
    assert main(["lm", "--units", str(tmp_path), "--text", str(tmp_path / "text.txt"),
                 "--out", str(tmp_path / "lm")]) == 2  # fmt: skip
    assert "units.txt" in capsys.readouterr().err
    assert main([*args, "--text", str(tmp_path / "text.txt")]) == 0
    assert "3-gram LM of 2 sentences, lexicon of 5 words" in capsys.readouterr().out
