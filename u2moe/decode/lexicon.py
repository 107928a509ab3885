"""Decoding with a lexicon and a word n-gram language model: CTC beam search over words.

`build_lm(sentences, tokenizer, out)` writes an LM directory, which
`ctc_lexicon_beam_search` decodes with:

    lexicon.txt   one word per line, then its spelling in the model's units
    lm.arpa       a word n-gram LM in ARPA format (IRSTLM's tlm, Witten-Bell smoothing)
    units.txt     the units the spellings use (and bpe.model for BPE): a model with other
                  units cannot use this directory

The search is flashlight-text's LexiconDecoder with KenLM (the decoder behind torchaudio's
`ctc_decoder`): hypotheses grow only along spellings of lexicon words, and each finished
word adds lm_weight * log P(word | history) + word_score. The output is always a sequence
of known words, which is what a closed-vocabulary task wants: the CTC output of a weak
model is often heard right and spelled wrong.
"""

import contextlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flashlight.lib.text.decoder import (
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    SmearingMode,
    Trie,
)
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from u2moe.data.files import atomic_path, write_text_atomic
from u2moe.data.tokenizer import WORD_BOUNDARY, Tokenizer, load_tokenizer, write_units
from u2moe.decode.search import Hypothesis, host_array
from u2moe.errors import UserError

LEXICON = "lexicon.txt"
ARPA = "lm.arpa"
UNK_WORD = "<unk>"
SENTENCE_TAGS = ("<s>", "</s>")


def build_lm(sentences: Iterable[str], tokenizer: Tokenizer, out: Path, order: int = 3) -> dict:
    """Write lexicon.txt, lm.arpa and the units to `out`; returns counts for a summary.

    A sentence holding a word that the model's units cannot spell (it would need the
    unknown unit) is left out; the lexicon is the words of the sentences kept, as the LM.
    """
    if order < 1:
        raise UserError(f"--order must be >= 1, got {order}")
    tlm = shutil.which("irstlm")
    if tlm is None:
        raise UserError("irstlm not found: install it (scripts/install_system_packages.sh)")
    spellings: dict[str, list[int]] = {}
    kept, dropped = [], 0
    for sentence in sentences:
        words = sentence.split()
        for word in words:
            if word not in spellings:
                spellings[word] = tokenizer.encode(word)
        if any(tokenizer.unk_id in spellings[w] or w in SENTENCE_TAGS for w in words):
            dropped += 1
        elif words:
            kept.append(" ".join(words))
    if not kept:
        raise UserError("no sentence to build a language model from (all empty or unspellable)")
    lexicon = {w: spellings[w] for sentence in kept for w in sentence.split()}
    lexicon.pop(UNK_WORD, None)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text"
        text.write_text("".join(f"<s> {s} </s>\n" for s in kept), encoding="utf-8")
        with atomic_path(out / ARPA) as arpa:
            command = [tlm, "tlm", f"-tr={text}", f"-n={order}", "-lm=wb", "-ps=no", f"-o={arpa}"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0 or not arpa.is_file():
                why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"irstlm tlm failed (exit {done.returncode}): {why[0]}")
    lines = (f"{w} {' '.join(tokenizer.units[i] for i in s)}\n" for w, s in lexicon.items())
    write_text_atomic(out / LEXICON, "".join(lines))
    write_units(out / "units.txt", tokenizer.units)
    if tokenizer.bpe is not None:
        with atomic_path(out / "bpe.model") as path:
            path.write_bytes(tokenizer.bpe.serialized_model_proto())
    return {"order": order, "words": len(lexicon), "sentences": len(kept), "dropped": dropped}


class LexiconSearch:
    """CTC beam search constrained to a lexicon, with a word n-gram LM (module docstring).

    beam_size: hypotheses kept per frame; lm_weight, word_score: as in the module docstring.
    """

    def __init__(
        self,
        lm_dir: str | Path,
        tokenizer: Tokenizer,
        beam_size: int = 10,
        lm_weight: float = 0.8,
        word_score: float = 1.0,
    ):
        lm_dir = Path(lm_dir)
        for name in (LEXICON, ARPA, "units.txt"):
            if not (lm_dir / name).is_file():
                raise UserError(f"{lm_dir}: no {name} (make the LM directory with `u2moe lm`)")
        if load_tokenizer(lm_dir).units != tokenizer.units:
            raise UserError(f"{lm_dir}: its lexicon spells words in other units than the model's")
        self.words = Dictionary()
        self.spellings: list[list[int]] = []
        ids = {unit: i for i, unit in enumerate(tokenizer.units)}
        path = lm_dir / LEXICON
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            word, *units = line.split() or [""]
            if not units or any(u not in ids for u in units):
                raise UserError(f"{path}:{number}: expected a word and its known units: {line!r}")
            self.words.add_entry(word)
            self.spellings.append([ids[u] for u in units])
        self.words.add_entry(UNK_WORD)
        try:
            with _stderr_silenced():  # KenLM draws a progress bar of asterisks while loading
                self.lm = KenLM(str(lm_dir / ARPA), self.words)
        except RuntimeError as e:
            raise UserError(f"{lm_dir / ARPA}: not a readable ARPA file ({e})") from None
        blank = tokenizer.blank_id
        # Characters spell words without their boundary unit, which goes between words as
        # flashlight's silence; word pieces carry the boundary inside, and the blank stands
        # in for the silence unit flashlight expects.
        boundary = ids.get(WORD_BOUNDARY) if tokenizer.bpe is None else None
        self.separator = [] if boundary is None else [boundary]
        silence = blank if boundary is None else boundary
        self.trie = Trie(tokenizer.vocab_size, silence)
        start = self.lm.start(False)
        for index, spelling in enumerate(self.spellings):
            self.trie.insert(spelling, index, self.lm.score(start, index)[1])
        self.trie.smear(SmearingMode.MAX)
        self.options = LexiconDecoderOptions(
            beam_size=beam_size,
            beam_size_token=tokenizer.vocab_size,
            beam_threshold=25.0,
            lm_weight=lm_weight,
            word_score=word_score,
            unk_score=-math.inf,
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        self.silence, self.blank = silence, blank
        self.unk = self.words.get_index(UNK_WORD)

    def stream(self) -> "LexiconStream":
        """A search over one utterance, fed frames as they come (its own decoder state)."""
        decoder = LexiconDecoder(
            self.options, self.trie, self.lm, self.silence, self.blank, self.unk, [], False
        )
        return LexiconStream(self, decoder)

    def __call__(self, log_probs: np.ndarray, lengths: np.ndarray) -> list[Hypothesis]:
        """CTC log-probs (B, T, V) and lengths (B,) -> the best hypothesis per utterance
        (its tokens are the spellings of its words; score: acoustic + weighted LM)."""
        results = []
        for utterance, length in zip(log_probs, host_array(lengths).tolist(), strict=True):
            search = self.stream()
            search.advance(utterance[:length])
            results.append(search.finish())
        return results

    def hypothesis(self, result) -> Hypothesis:
        """A flashlight DecodeResult -> its words' spellings (separated for characters)."""
        words = [self.spellings[w] for w in result.words if w >= 0]
        tokens = [t for i, word in enumerate(words) for t in (self.separator if i else []) + word]
        return Hypothesis(tokens, result.score)


class LexiconStream:
    """One utterance of LexiconSearch, frame chunk by frame chunk: the same result as the
    whole utterance at once, and a partial (the words finished so far) after each chunk."""

    def __init__(self, search: LexiconSearch, decoder):
        self.search, self.decoder = search, decoder
        self.frames = 0
        decoder.decode_begin()

    def advance(self, log_probs: np.ndarray) -> None:
        """Feed the CTC log-probs (t, V) of the next frames."""
        frames = np.ascontiguousarray(host_array(log_probs), dtype=np.float32)
        if len(frames) > 0:
            self.decoder.decode_step(frames.ctypes.data, *frames.shape)
            self.frames += len(frames)

    def nbest(self) -> list[Hypothesis]:
        """[the best hypothesis so far], the interface of CtcPrefixBeamSearch."""
        if self.frames == 0:
            return [Hypothesis([], 0.0)]
        return [self.search.hypothesis(self.decoder.get_best_hypothesis())]

    def finish(self) -> Hypothesis:
        """End of the utterance: the best complete hypothesis (with the LM's end of sentence)."""
        if self.frames == 0:
            return Hypothesis([], -math.inf)
        self.decoder.decode_end()
        results = self.decoder.get_all_final_hypothesis()
        return self.search.hypothesis(results[0]) if results else Hypothesis([], -math.inf)


@contextlib.contextmanager
def _stderr_silenced():
    """Send what C++ code writes to file descriptor 2 to /dev/null for the block."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
