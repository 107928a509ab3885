"""`u2moe` command line: one command, subcommands in their own modules.

Each subcommand module defines `add_arguments(parser)` and `main(args) -> int | None`.
Modules are imported only when their subcommand runs, so `u2moe --help` stays fast.
"""

import argparse
import importlib
import sys

from u2moe.errors import UserError

# subcommand -> (module, one-line help)
COMMANDS = {
    "info": ("u2moe.commands.info", "parameter counts of a config (total, active per frame)"),
    "import-wenet": ("u2moe.commands.wenet", "turn a WeNet U2++ checkpoint into a u2moe model"),
    "upcycle": ("u2moe.commands.upcycle", "turn a dense model into a MoE one (experts = copies)"),
    "verify-wenet": ("u2moe.commands.verify_wenet", "check u2moe against a WeNet fixture"),
    "corpus": ("u2moe.commands.corpus", "synthesize the built-in English corpus"),
    "shard": ("u2moe.commands.shard", "pack a manifest into tar shards and a shard list"),
    "prepare": ("u2moe.commands.prepare", "manifests, CMVN and tokenizer from a corpus"),
    "train": ("u2moe.commands.train", "train a U2++ (MoE) model"),
    "average": ("u2moe.commands.average", "average the best checkpoints of an experiment"),
    "lm": ("u2moe.commands.lm", "a lexicon and word n-gram LM for ctc_lexicon_beam_search"),
    "decode": ("u2moe.commands.decode", "decode a manifest and score WER/CER and RTF"),
    "experts": ("u2moe.commands.experts", "what the experts of a MoE model do on a manifest"),
    "transcribe": ("u2moe.commands.transcribe", "transcribe audio files"),
    "export": ("u2moe.commands.export", "ONNX / sherpa-onnx / WeNet export of a model"),
    "serve": ("u2moe.commands.serve", "a streaming server (WeNet's websocket protocol), web page"),
    "client": ("u2moe.commands.client", "stream an audio file to a streaming server"),
    "demo": ("u2moe.commands.demo", "the main job: corpus, train MoE and dense, decode, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="u2moe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints usage or an "invalid choice" error
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"u2moe {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return module.main(args) or 0
    except UserError as e:
        print(f"u2moe {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"u2moe {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
