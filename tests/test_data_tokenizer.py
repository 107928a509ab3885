"""Tokenizers: WeNet id layout, round trips, <unk>, units.txt format, BPE."""

import pytest

from u2moe.data.config import TokenizerConfig
from u2moe.data.tokenizer import (
    WORD_BOUNDARY,
    Tokenizer,
    load_tokenizer,
    read_units,
    train_tokenizer,
    write_units,
)
from u2moe.errors import UserError

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "it's a truth universally acknowledged",
    "a single man in possession of a good fortune",
    "must be in want of a wife",
] * 20


def test_char_layout_and_round_trip(tmp_path):
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(type="char"), tmp_path)
    units = tokenizer.units
    assert units[0] == "<blank>" and units[1] == "<unk>" and units[-1] == "<sos/eos>"
    assert tokenizer.sos_id == tokenizer.eos_id == tokenizer.vocab_size - 1 == len(units) - 1
    assert WORD_BOUNDARY in units and "'" in units and " " not in units
    assert set(units[2:-1]) == set("abcdefghijklmnopqrstuvwxyz'" + WORD_BOUNDARY)
    ids = tokenizer.encode("it's  the fox ")
    assert ids[2] == units.index("'") and ids[3] == units.index("s")
    assert ids.count(units.index(WORD_BOUNDARY)) == 2  # whitespace collapsed, ends stripped
    assert tokenizer.decode(ids) == "it's the fox"
    assert tokenizer.decode([0, *ids, tokenizer.eos_id, 0]) == "it's the fox"


def test_unknown_symbols_map_to_unk(tmp_path):
    tokenizer = train_tokenizer(TEXTS, TokenizerConfig(type="char"), tmp_path)
    ids = tokenizer.encode("fox Ω!")
    assert ids[-2:] == [tokenizer.unk_id, tokenizer.unk_id]
    assert tokenizer.decode(ids) == "fox <unk><unk>"
    assert tokenizer.has_known_token(ids)
    assert not tokenizer.has_known_token(tokenizer.encode("ΩΩ ΩΩ"))
    assert not tokenizer.has_known_token(tokenizer.encode(""))


def test_units_file_format(tmp_path):
    train_tokenizer(TEXTS, TokenizerConfig(type="char"), tmp_path)
    lines = (tmp_path / "units.txt").read_text().splitlines()
    assert lines[0] == "<blank> 0" and lines[1] == "<unk> 1"
    assert lines[-1] == f"<sos/eos> {len(lines) - 1}"
    assert all(line.split()[1] == str(i) for i, line in enumerate(lines))
    assert load_tokenizer(tmp_path).units == read_units(tmp_path / "units.txt")

    (tmp_path / "gap.txt").write_text("<blank> 0\n<unk> 1\na 3\n<sos/eos> 4\n")
    with pytest.raises(UserError, match="gap.txt: ids are not"):
        read_units(tmp_path / "gap.txt")
    (tmp_path / "order.txt").write_text("<unk> 0\n<blank> 1\n<sos/eos> 2\n")
    with pytest.raises(UserError, match="order.txt: must start with"):
        read_units(tmp_path / "order.txt")
    with pytest.raises(UserError, match="no such units file"):
        read_units(tmp_path / "none.txt")


def test_bpe_round_trip_and_reload(tmp_path):
    cfg = TokenizerConfig(type="bpe", vocab_size=60)
    tokenizer = train_tokenizer(TEXTS, cfg, tmp_path)
    assert (tmp_path / "bpe.model").is_file()
    assert tokenizer.units[:2] == ["<blank>", "<unk>"] and tokenizer.units[-1] == "<sos/eos>"
    assert tokenizer.vocab_size == len(read_units(tmp_path / "units.txt"))
    text = "the lazy fox must be a good man"
    ids = tokenizer.encode(text)
    assert len(ids) < len(text)  # pieces longer than characters
    assert tokenizer.unk_id not in ids and tokenizer.decode(ids) == text
    assert tokenizer.unk_id in tokenizer.encode("the Ω")
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.bpe is not None and reloaded.encode(text) == ids


def test_bad_tables_and_models(tmp_path):
    with pytest.raises(UserError):
        Tokenizer(["a", "<unk>", "<sos/eos>"])
    write_units(tmp_path / "units.txt", ["<blank>", "<unk>", "a", "<sos/eos>"])
    with pytest.raises(UserError, match="no such sentencepiece model"):
        load_tokenizer(tmp_path, TokenizerConfig(type="bpe"))
    (tmp_path / "bpe.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a sentencepiece model"):
        load_tokenizer(tmp_path)
