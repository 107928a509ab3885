"""Counting the utterances the data pipeline leaves out, with the first few keys per reason."""

from collections import Counter
from collections.abc import Iterable


class SkipStats:
    """Reason -> count, plus the first `max_examples` keys of each reason."""

    def __init__(self, max_examples: int = 5):
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, key: str, reason: str) -> bool:
        """Count one skip; True when it is among the first few of its reason (worth logging)."""
        self.counts[reason] += 1
        keys = self.examples.setdefault(reason, [])
        if len(keys) < self.max_examples:
            keys.append(key)
            return True
        return False

    def update(self, skips: Iterable[tuple[str, str]]) -> None:
        for key, reason in skips:
            self.add(key, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {
            reason: {"count": count, "first_keys": self.examples[reason]}
            for reason, count in self.counts.most_common()
        }

    def summary(self) -> str:
        """One line, e.g. `3 skipped: 2 unreadable audio (a, b), 1 no known token (c)`."""
        if not self.counts:
            return "0 skipped"
        parts = [
            f"{count} {reason} ({', '.join(self.examples[reason])}"
            + (", ..." if count > len(self.examples[reason]) else "")
            + ")"
            for reason, count in self.counts.most_common()
        ]
        return f"{self.total} skipped: " + "; ".join(parts)
