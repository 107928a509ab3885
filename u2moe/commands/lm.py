"""`u2moe lm`: a lexicon and a word n-gram LM for `ctc_lexicon_beam_search`.

    u2moe lm --units exp/model --text data/train.jsonl --out exp/lm
    u2moe decode --model exp/model --data data/test.jsonl --out exp/decode \\
        --mode ctc_lexicon_beam_search --lm exp/lm

--units is a model or prepared-data directory (its units.txt and bpe.model spell the
words); --text is a manifest, data.list or Kaldi directory (its transcripts) or a .txt file
of one sentence per line, repeatable. The words of the text are the lexicon: decoding can
output no other word. Use training text only, never the test set's.
"""

import json
from pathlib import Path

from u2moe.commands.arguments import output_dir, positive_int
from u2moe.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--units", required=True, type=Path, help="model or data directory")
    parser.add_argument(
        "--text", required=True, action="append", type=Path, help="manifest or .txt (repeat)"
    )
    parser.add_argument("--out", required=True, type=output_dir, help="LM directory to write")
    parser.add_argument("--order", type=positive_int, default=3, help="n-gram order (default 3)")


def sentences(path: Path):
    """Transcripts of a manifest (any format read_manifest knows) or lines of a .txt file."""
    from u2moe.data.manifest import read_manifest

    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            yield from (line for line in f if line.strip())
    else:
        yield from (utterance.text for utterance in read_manifest(path))


def main(args) -> int:
    from u2moe.data.files import write_text_atomic
    from u2moe.data.tokenizer import load_tokenizer
    from u2moe.decode.lexicon import build_lm

    tokenizer = load_tokenizer(args.units)
    texts = (sentence for path in args.text for sentence in sentences(path))
    summary = build_lm(texts, tokenizer, args.out, args.order)
    summary["text"] = [str(p) for p in args.text]
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    dropped = summary["dropped"]
    note = f"; {dropped} sentences with unspellable words left out" if dropped else ""
    print(
        f"{args.out}: {summary['order']}-gram LM of {summary['sentences']} sentences, "
        f"lexicon of {summary['words']} words{note}"
    )
    return 0
