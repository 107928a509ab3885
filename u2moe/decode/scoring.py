"""Word and character error rates with substitutions, deletions and insertions.

The alignment is jiwer's (a minimum-edit Levenshtein alignment in rapidfuzz). Texts are
compared after whitespace normalization only; any other normalization (case, punctuation)
is the corpus's job. CER counts characters including the single space between words, as
ESPnet's `<space>` convention does.
"""

from dataclasses import dataclass

import jiwer


@dataclass
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_length: int = 0  # reference words (or characters): hits + substitutions + deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit; an empty reference counts each insertion as one."""
        return self.errors / max(self.ref_length, 1)

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.ref_length + other.ref_length,
        )

    @classmethod
    def from_dict(cls, counts: dict) -> "ErrorCounts":
        """The inverse of `as_dict` (its derived rate and errors are ignored)."""
        return cls(
            counts["substitutions"], counts["deletions"], counts["insertions"], counts["ref_length"]
        )

    def as_dict(self) -> dict:
        return {
            "rate": self.rate,
            "errors": self.errors,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "ref_length": self.ref_length,
        }


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def word_errors(ref: str, hyp: str) -> ErrorCounts:
    """Edit operations turning the words of `ref` into the words of `hyp`."""
    return _counts(jiwer.process_words(normalize_whitespace(ref), normalize_whitespace(hyp)))


def char_errors(ref: str, hyp: str) -> ErrorCounts:
    """Edit operations turning the characters of `ref` into those of `hyp`."""
    return _counts(jiwer.process_characters(normalize_whitespace(ref), normalize_whitespace(hyp)))


def _counts(out) -> ErrorCounts:
    return ErrorCounts(
        out.substitutions,
        out.deletions,
        out.insertions,
        out.hits + out.substitutions + out.deletions,
    )
