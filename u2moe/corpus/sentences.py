"""Sentences for the corpus: Debian's fortunes and WordNet examples, normalized and banded.

Every sentence is reduced to lowercase words of letters and apostrophes, the form that is
both fed to the engines and written as the transcript, so what is spoken is what is labelled.
Which split a sentence may go to depends only on its text (the SHA-1 band), never on a seed.
"""

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
DICTIONARY = Path("/usr/share/dict/words")

# Fortune files of pictures, code and jargon that no synthesizer reads sensibly.
EXCLUDED_FORTUNES = {
    "art", "ascii-art", "perl", "linux", "debian", "computers", "startrek", "zippy",
}  # fmt: skip
MIN_WORDS, MAX_WORDS = 4, 22

# The SHA-1 bands of CORPUS.md: below RESERVED_BELOW is kept for external evaluation and
# never used; [RESERVED_BELOW, TEST_FROM) is dev, [TEST_FROM, TRAIN_FROM) test, the rest train.
RESERVED_BELOW = 0.05
TEST_FROM = 0.10
TRAIN_FROM = 0.15

# Abbreviations that end in a period: engines expand them unpredictably ("st" is saint or
# street) and a sentence splitter would cut after them.
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "gen", "col", "capt",
    "lt", "sgt", "rev", "mt", "ft", "no", "eg", "ie", "co", "inc", "ltd",
}  # fmt: skip

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_ATTRIBUTION = re.compile(r"^\s*(--|-- |\u2014)")
# Punctuation a reader pauses on but does not pronounce; anything else (digits, $, %, &,
# @, /, #, *, ...) is read in engine-specific ways, so such a sentence is rejected.
_SILENT_PUNCTUATION = re.compile(r"[.,;:!?\"()\[\]]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")


def sha1_fraction(sentence: str) -> float:
    """Position of a normalized sentence in [0, 1], from its SHA-1 (the rule of CORPUS.md)."""
    return int(hashlib.sha1(sentence.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def sentence_split(sentence: str) -> str | None:
    """'train', 'dev' or 'test' for a normalized sentence, or None for a reserved one."""
    fraction = sha1_fraction(sentence)
    if fraction < RESERVED_BELOW:
        return None
    if fraction < TEST_FROM:
        return "dev"
    if fraction < TRAIN_FROM:
        return "test"
    return "train"


def ascii_fold(text: str) -> str:
    """'café déjà vu' -> 'cafe deja vu'; typographic quotes and dashes become ASCII."""
    text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"', 0x2014: " - "})
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def normalize(raw: str, vocabulary: set[str]) -> str | None:
    """One raw sentence -> lowercase words joined by single spaces, or None if rejected.

    Rejected: digits, symbols, all-capital acronyms, abbreviations, fewer than MIN_WORDS or
    more than MAX_WORDS words, and any word missing from `vocabulary` (lowercase).
    """
    text = ascii_fold(raw)
    if _ACRONYM.search(text):
        return None
    text = _SILENT_PUNCTUATION.sub(" ", text)
    # Hyphens join words ("well-known") or stand for a dash: both are read as a pause.
    text = text.replace("-", " ").lower()
    # Quotes made of apostrophes ('like this') are not part of the words.
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    for word in words:
        if not _WORD.fullmatch(word) or word in ABBREVIATIONS or word not in vocabulary:
            return None
    return " ".join(words)


def split_sentences(paragraph: str) -> list[str]:
    """Cut running text after '.', '!' or '?' (and closing quotes) followed by white space."""
    return [s for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s]


def fortune_paragraphs(path: Path) -> Iterator[str]:
    """The entries of one fortune file (separated by '%' lines), attributions dropped."""
    entry: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() + ["%"]:
        if line.strip() == "%":
            if entry:
                yield " ".join(entry)
            entry = []
        elif not _ATTRIBUTION.match(line):
            entry.append(line)


def wordnet_examples(path: Path) -> Iterator[str]:
    """The quoted example sentences of the glosses in one WordNet data file."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue  # the licence header
        yield from re.findall(r'"([^"]+)"', line.split("|", 1)[1])


def raw_sentences() -> Iterator[str]:
    """Every candidate sentence of the installed text packages, before normalization."""
    for path in sorted(FORTUNES_DIR.glob("*")):
        if path.is_file() and not path.suffix and path.name not in EXCLUDED_FORTUNES:
            for paragraph in fortune_paragraphs(path):
                yield from split_sentences(paragraph)
    for part in ("noun", "verb", "adj", "adv"):
        yield from wordnet_examples(WORDNET_DIR / f"data.{part}")


def load_vocabulary(path: Path = DICTIONARY) -> set[str]:
    return {word.strip().lower() for word in path.read_text(encoding="utf-8").splitlines()}


def normalize_all(raw: Iterable[str], vocabulary: set[str]) -> list[str]:
    """Normalized, unique, sorted sentences (sorted so that plans never depend on file order)."""
    return sorted({s for s in (normalize(r, vocabulary) for r in raw) if s is not None})


def missing_sources() -> list[str]:
    """Paths of the text packages' files that are not installed (empty when all are)."""
    needed = [FORTUNES_DIR / "fortunes", DICTIONARY]
    needed += [WORDNET_DIR / f"data.{part}" for part in ("noun", "verb", "adj", "adv")]
    return [str(p) for p in needed if not p.exists()]


def closed_vocabulary(sentences: Iterable[str], size: int) -> set[str]:
    """The `size` most frequent words of the train band (ties alphabetically).

    Counted on training sentences only, so no dev or test text shapes the task.
    """
    counts = Counter(w for s in sentences if sentence_split(s) == "train" for w in s.split())
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return set(ranked[:size])


def within_vocabulary(sentences: Iterable[str], size: int | None) -> list[str]:
    """The sentences all of whose words are among the `size` most frequent (None: all)."""
    sentences = list(sentences)
    if size is None:
        return sentences
    words = closed_vocabulary(sentences, size)
    return [s for s in sentences if set(s.split()) <= words]


def load_sentences() -> list[str]:
    """All usable sentences of the installed packages (reserved ones included: see bands)."""
    return normalize_all(raw_sentences(), load_vocabulary())
