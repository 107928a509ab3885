"""Hotwords: contextual biasing of CTC prefix beam search with a context graph.

A context graph is a trie of the token sequences of a list of phrases, with Aho-Corasick
failure links (as WeNet's and icefall's context biasing build it). A prefix in the beam
walks the graph one token at a time: each token that extends a partial match earns a bonus
(`score` per token, or the phrase's own score); a token that breaks a partial match takes
the partial bonus back, falling to the longest suffix that still matches. A finished phrase
keeps its bonus. Pure Python, no torch.

    graph = ContextGraph.from_file("hotwords.txt", tokenizer, score=2.0)
    state, bonus = graph.root, 0.0
    for token in prefix:
        state, delta = graph.step(state, token); bonus += delta

Phrase file: one phrase per line; a last field of the form `:SCORE` sets that phrase's
bonus per token (sherpa-onnx's hotword format), e.g. `gold medal :3.5`.
"""

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from u2moe.errors import UserError


@dataclass(eq=False)
class ContextState:
    """A node of the graph: the phrase prefix matched so far."""

    depth: int = 0
    score: float = 0.0  # bonus earned by the match so far (sum of per-token scores)
    is_end: bool = False  # a whole phrase ends here
    children: dict[int, "ContextState"] = field(default_factory=dict)
    fail: "ContextState | None" = None  # the longest proper suffix that is also in the graph


class ContextGraph:
    def __init__(self, phrases: list[tuple[list[int], float]]):
        """phrases: (token ids, bonus per token) each."""
        self.root = ContextState()
        for tokens, score in phrases:
            node = self.root
            for token in tokens:
                child = node.children.get(token)
                if child is None:
                    child = ContextState(node.depth + 1, node.score + score)
                    node.children[token] = child
                node = child
            node.is_end = True
        self._link_failures()

    def _link_failures(self) -> None:
        """Breadth first: a node's failure link is its parent's link's child for the same
        token (or the root), as in Aho-Corasick."""
        self.root.fail = self.root
        queue = deque()
        for child in self.root.children.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            for token, child in node.children.items():
                link = node.fail
                while link is not self.root and token not in link.children:
                    link = link.fail
                target = link.children.get(token)
                child.fail = target if target is not None and target is not child else self.root
                queue.append(child)

    def step(self, state: ContextState, token: int) -> tuple[ContextState, float]:
        """-> (next state, bonus delta) for one more token of a prefix."""
        node = state
        while token not in node.children and node is not self.root:
            node = node.fail
        target = node.children.get(token, self.root)
        if target.is_end:
            # a finished phrase keeps its bonus: continue from the root with nothing to undo
            return self.root, target.score - state.score
        return target, target.score - state.score

    def finish(self, state: ContextState) -> float:
        """The bonus to take back when a prefix ends inside a partial match."""
        return -state.score

    @classmethod
    def from_file(cls, path: str | Path, tokenizer, score: float) -> "ContextGraph":
        """Phrases of a file (see the module docstring), tokenized with `tokenizer`. A
        UserError names the line for a bad score or a phrase with units outside the table."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such context file")
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls.from_phrases(lines, tokenizer, score, where=str(path))

    @classmethod
    def from_phrases(
        cls, lines: list[str], tokenizer, score: float, where: str = "context"
    ) -> "ContextGraph":
        """Phrases given as lines (each optionally ending in `:SCORE`; blank ones skipped)."""
        phrases = []
        for number, line in enumerate(lines, 1):
            text, phrase_score = _parse_line(line, score, f"{where}:{number}")
            if not text:
                continue
            tokens = tokenizer.encode(text)
            if not tokens or tokenizer.unk_id in tokens:
                raise UserError(f"{where}:{number}: {text!r} has units the model does not know")
            phrases.append((tokens, phrase_score))
        if not phrases:
            raise UserError(f"{where}: no phrases")
        return cls(phrases)


def _parse_line(line: str, default: float, where: str) -> tuple[str, float]:
    words = line.split()
    if words and words[-1].startswith(":"):
        try:
            return " ".join(words[:-1]), float(words[-1][1:])
        except ValueError:
            raise UserError(f"{where}: {words[-1]!r} is not a score (:NUMBER)") from None
    return " ".join(words), default
