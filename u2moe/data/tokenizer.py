"""Text <-> token ids: characters or sentencepiece BPE, through a WeNet `units.txt` table.

Id layout (WeNet's): `<blank>` 0, `<unk>` 1, the units, `<sos/eos>` last. A space between
words is the unit `▁` (U+2581, as in sentencepiece), so `decode(encode(text))` gives the
words back. Symbols outside the table become `<unk>`.
"""

import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from u2moe.data.config import TokenizerConfig
from u2moe.data.files import atomic_path, write_text_atomic
from u2moe.errors import UserError

BLANK = "<blank>"
UNK = "<unk>"
SOS_EOS = "<sos/eos>"
WORD_BOUNDARY = "\u2581"  # ▁


class Tokenizer:
    """`encode(text) -> ids`, `decode(ids) -> text`; `bpe` is None for characters."""

    def __init__(self, units: list[str], bpe: spm.SentencePieceProcessor | None = None):
        _check_layout(units, "units")
        self.units = units
        self.bpe = bpe
        self._ids = {unit: i for i, unit in enumerate(units)}

    blank_id = 0
    unk_id = 1

    @property
    def vocab_size(self) -> int:
        return len(self.units)

    @property
    def sos_id(self) -> int:
        return len(self.units) - 1

    @property
    def eos_id(self) -> int:
        return len(self.units) - 1

    def tokenize(self, text: str) -> list[str]:
        """Text -> unit strings (before the id lookup)."""
        if self.bpe is not None:
            return self.bpe.encode(" ".join(text.split()), out_type=str)
        return _characters(text)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(piece, self.unk_id) for piece in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; blank and sos/eos are dropped, unknown units read `<unk>`."""
        pieces = [self.units[i] for i in ids if i != self.blank_id and i != self.sos_id]
        return "".join(pieces).replace(WORD_BOUNDARY, " ").strip()

    def has_known_token(self, ids: list[int]) -> bool:
        """False for a text that is all `<unk>` and word boundaries (nothing to learn)."""
        boundary = self._ids.get(WORD_BOUNDARY)
        return any(i != self.unk_id and i != boundary for i in ids)


def read_units(path: str | Path) -> list[str]:
    """Read WeNet's `units.txt` (`<token> <id>` per line, ids 0..N-1)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such units file")
    units: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise UserError(f"{path}:{number}: expected '<token> <id>', got {line!r}")
        units[int(parts[1])] = parts[0]
    if sorted(units) != list(range(len(units))):
        raise UserError(f"{path}: ids are not 0..{len(units) - 1} without gaps")
    table = [units[i] for i in range(len(units))]
    _check_layout(table, str(path))
    return table


def _check_layout(units: list[str], where: str) -> None:
    if len(units) < 3 or units[0] != BLANK or units[1] != UNK or units[-1] != SOS_EOS:
        raise UserError(f"{where}: must start with '{BLANK} 0', '{UNK} 1' and end with {SOS_EOS}")


def write_units(path: str | Path, units: list[str]) -> None:
    write_text_atomic(path, "".join(f"{unit} {i}\n" for i, unit in enumerate(units)))


def load_tokenizer(directory: str | Path, cfg: TokenizerConfig | None = None) -> Tokenizer:
    """The tokenizer of a prepared data or model directory (`units.txt`, `bpe.model` for BPE).

    Without `cfg`, a `bpe.model` beside the units file means BPE.
    """
    cfg = cfg or TokenizerConfig()
    directory = Path(directory)
    units = read_units(directory / cfg.units)
    bpe_path = directory / cfg.bpe_model
    if cfg.type == "bpe" or bpe_path.is_file():
        if not bpe_path.is_file():
            raise UserError(f"{bpe_path}: no such sentencepiece model (tokenizer.type is bpe)")
        try:
            bpe = spm.SentencePieceProcessor(model_file=str(bpe_path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{bpe_path}: not a sentencepiece model ({e})") from None
        return Tokenizer(units, bpe)
    return Tokenizer(units)


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, directory: str | Path) -> Tokenizer:
    """Build units from training texts, write `units.txt` (and `bpe.model`) into `directory`.

    Characters: every character seen (spaces become `▁`). BPE: a sentencepiece model with
    `cfg.vocab_size` pieces (fewer if the text is too small to support that many).
    """
    directory = Path(directory)
    if cfg.type == "char":
        seen = {piece for text in texts for piece in _characters(text)}
        units = [BLANK, UNK, *sorted(seen - {BLANK, UNK, SOS_EOS}), SOS_EOS]
        write_units(directory / cfg.units, units)
        return Tokenizer(units)
    bpe = _train_sentencepiece(texts, cfg.vocab_size, directory / cfg.bpe_model)
    pieces = [bpe.id_to_piece(i) for i in range(bpe.get_piece_size())]
    units = [BLANK, UNK, *(p for i, p in enumerate(pieces) if not _is_special(bpe, i)), SOS_EOS]
    write_units(directory / cfg.units, units)
    return Tokenizer(units, bpe)


def _characters(text: str) -> list[str]:
    return [WORD_BOUNDARY if ch == " " else ch for ch in " ".join(text.split())]


def _is_special(bpe: spm.SentencePieceProcessor, i: int) -> bool:
    return bpe.is_unknown(i) or bpe.is_control(i) or bpe.is_unused(i)


def _train_sentencepiece(
    texts: Iterable[str], vocab_size: int, model_path: Path
) -> spm.SentencePieceProcessor:
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "text.txt"
        with text_file.open("w", encoding="utf-8") as f:
            for text in texts:
                f.write(" ".join(text.split()) + "\n")
        prefix = Path(tmp) / "bpe"
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_file),
                model_prefix=str(prefix),
                model_type="bpe",
                vocab_size=vocab_size,
                character_coverage=1.0,
                hard_vocab_limit=False,  # a small corpus gets the pieces it supports
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise UserError(f"sentencepiece training failed: {e}") from None
        with atomic_path(model_path) as tmp_model:
            tmp_model.write_bytes(prefix.with_suffix(".model").read_bytes())
    return spm.SentencePieceProcessor(model_file=str(model_path))
