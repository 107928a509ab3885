"""The main job: the paper's comparison at small scale, end to end on the built-in corpus.

Each stage is the `u2moe` command a user would type (logged as such), so the demo doubles
as the recipe to copy:

  1. corpus   synthesize the English corpus (train / dev / test with unseen speakers)
  2. prepare  manifests, global CMVN, units (the configs' data.tokenizer: BPE)
  3. train    the small MoE model and a dense model of the same active compute, side by
              side, one CPU thread each (each ends by averaging its best checkpoints)
  4. lm       a lexicon and word trigram LM from the training transcripts
  5. decode   the test split, full context and chunk-16 streaming (the encoder really runs
              chunk by chunk with caches), CTC greedy / CTC prefix beam / attention rescoring
              / CTC beam search over the lexicon's words with the LM
  6. report   one table (WER, RTF, parameters total and active per model and mode) on
              stdout and in OUT/REPORT.md with the training plots

A finished stage leaves a marker in OUT/stages/ and is skipped on a rerun with the same
command; training that was interrupted resumes from its last checkpoint.
"""

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from u2moe.decode.batch import load_summary
from u2moe.errors import UserError

log = logging.getLogger("u2moe.demo")

MODES = [
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "attention_rescoring",
    "ctc_lexicon_beam_search",
]
DECODE_THREADS = 1  # RTF is measured on one thread, the usual convention


@dataclass
class Decoding:
    name: str
    label: str
    chunk_size: int  # -1: full context; > 0: real streaming, chunk by chunk with caches
    cpu_weights: str  # weights packed once for CPU inference: "float32" or "int8"


DECODINGS = [
    Decoding("full", "full context", -1, "float32"),
    Decoding("chunk16", "streaming, chunk 16", 16, "float32"),
    Decoding("chunk16-int8", "streaming, chunk 16, int8 weights", 16, "int8"),
]


@dataclass
class DemoSize:
    """How much data and training: the full demo, --quick for a first look, or tests."""

    corpus_args: tuple[str, ...]  # extra `u2moe corpus` options (none: the demo corpus)
    max_steps: int | None  # None: the configs' own train.max_steps


FULL = DemoSize(corpus_args=(), max_steps=None)
QUICK = DemoSize(("--hours", "0.15", "--dev-utts", "40", "--test-utts", "40"), max_steps=60)


@dataclass
class Model:
    name: str  # "moe" or "dense"
    config: Path


def run_demo(out: Path, models: list[Model], size: DemoSize) -> str:
    """Run every stage into `out`; returns the Markdown report (also written to REPORT.md)."""
    for model in models:
        if not model.config.is_file():
            raise UserError(f"{model.config}: no such config (run the demo from the repository)")
    out.mkdir(parents=True, exist_ok=True)
    corpus, data = out / "corpus", out / "data"

    stage(out, "corpus", ["corpus", "--out", corpus, *size.corpus_args])
    stage(out, "prepare", ["prepare", "--train", corpus / "train.jsonl",
                           "--dev", corpus / "dev.jsonl", "--test", corpus / "test.jsonl",
                           "--out", data, "--config", models[0].config])  # fmt: skip
    trainings = {}
    for model in models:
        exp = out / "exp" / model.name
        argv = ["train", "--config", model.config, "--data", data, "--exp", exp]
        if size.max_steps is not None:
            argv += ["--max-steps", size.max_steps]
        if (exp / "checkpoints").is_dir() and any((exp / "checkpoints").iterdir()):
            argv.append("--resume")
        trainings[f"train-{model.name}"] = argv
    stages_side_by_side(out, trainings)
    lm = out / "lm"
    stage(out, "lm", ["lm", "--units", data, "--text", data / "train.jsonl", "--out", lm])

    results = []
    for model in models:
        for decoding in DECODINGS:
            decode_dir = out / "decode" / f"{model.name}-{decoding.name}"
            argv = ["decode", "--model", out / "exp" / model.name, "--data",
                    data / "test.jsonl", "--out", decode_dir, "--mode", ",".join(MODES),
                    "--chunk-size", decoding.chunk_size, "--cpu-weights", decoding.cpu_weights,
                    "--lm", lm, "--threads", DECODE_THREADS]  # fmt: skip
            if decoding.chunk_size > 0:
                argv.append("--streaming")
            stage(out, f"decode-{model.name}-{decoding.name}", argv, allowed_exit=(0, 1))
            results.append((model, decoding, load_summary(decode_dir / "summary.json")))

    report = write_report(out, models, results, stage_seconds(out, set(trainings)))
    return report


def stage(out: Path, name: str, argv: list, allowed_exit: tuple[int, ...] = (0,)) -> None:
    """Run one `u2moe` subcommand unless its marker says it already finished."""
    from u2moe.cli import main

    command = pending(out, name, argv)
    if command is None:
        return
    start = time.perf_counter()
    status = main([str(a) for a in argv])
    if status not in allowed_exit:
        raise UserError(f"stage {name} failed (exit {status}): {command}")
    finish(out, name, command, start)


def stages_side_by_side(out: Path, stages: dict[str, list]) -> None:
    """Run `u2moe` subcommands as parallel processes of one CPU thread each.

    The small models train faster so: on 2 cores, 80 steps of configs/small.yaml (without
    augmentation and dynamic chunks; `u2moe train --max-steps 80`, OMP_NUM_THREADS=1 or 2)
    took 81 s for two runs side by side, against 64 s for each run alone with 2 threads
    (128 s one after the other). The first stage writes to the console (its progress bar),
    the others to OUT/logs/NAME.log."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running = []
    for name, argv in stages.items():
        command = pending(out, name, argv)
        if command is None:
            continue
        console = open(out / "logs" / f"{name}.log", "w") if running else None
        argv = [sys.executable, "-m", "u2moe", *map(str, argv)]
        process = subprocess.Popen(argv, env=env, stdout=console, stderr=console)
        running.append((name, command, process, console))
    start = time.perf_counter()
    failed = []
    while running:  # in the order they end, so each marker records its own time
        time.sleep(1.0)
        for name, command, process, console in [r for r in running if r[2].poll() is not None]:
            if process.returncode != 0:
                failed.append(f"{name} (exit {process.returncode}): {command}")
            else:
                finish(out, name, command, start)
            if console is not None:
                console.close()
        running = [r for r in running if r[2].returncode is None]
    if failed:
        raise UserError("stage failed: " + "; ".join(failed) + f" (logs in {out / 'logs'})")


def pending(out: Path, name: str, argv: list) -> str | None:
    """The command line of a stage still to run (logged), or None if its marker holds the
    same command (`--resume` aside): a stage whose command changed, say a decode with
    other modes after an upgrade, runs again."""
    command = "u2moe " + shlex.join(str(a) for a in argv)
    marker = out / "stages" / f"{name}.done"
    if marker.exists():
        done = marker.read_text().splitlines()[0]
        if _without_resume(done) == _without_resume(command):
            log.info("[%s] done before, skipped: %s", name, command)
            return None
        log.info("[%s] done before with another command (%s), run again", name, done)
    log.info("[%s] %s", name, command)
    return command


def _without_resume(command: str) -> list[str]:
    return [a for a in shlex.split(command) if a != "--resume"]


def stage_seconds(out: Path, side_by_side: set[str]) -> float:
    """Seconds the stages took by their markers, so a rerun that skips some still reports
    the whole demo: the stages in `side_by_side` count as the longest of them."""
    seconds = {m.stem: float(m.read_text().split()[-2]) for m in (out / "stages").glob("*.done")}
    parallel = [t for name, t in seconds.items() if name in side_by_side]
    return sum(t for name, t in seconds.items() if name not in side_by_side) + max(
        parallel, default=0
    )


def finish(out: Path, name: str, command: str, start: float) -> None:
    """Leave the marker that makes a rerun skip the stage."""
    marker = out / "stages" / f"{name}.done"
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(f"{command}\n{time.perf_counter() - start:.1f} s\n")
    log.info("[%s] finished in %.1f min", name, (time.perf_counter() - start) / 60)


def parameter_counts(model_dir: Path) -> tuple[int, int]:
    """(total, active per frame) of a trained model, counted on the meta device."""
    from u2moe.config import load_yaml, parse_section
    from u2moe.model.config import ModelConfig
    from u2moe.model.params import count_config

    cfg = parse_section(ModelConfig, load_yaml(model_dir / "config.yaml")["model"], "model")
    parts = count_config(cfg)
    return sum(p.total for p in parts), sum(p.active for p in parts)


def write_report(out: Path, models: list[Model], results: list, seconds: float) -> str:
    """The results table on stdout-ready Markdown, saved as OUT/REPORT.md with the plots."""
    counts = {m.name: parameter_counts(out / "exp" / m.name) for m in models}
    rows = [
        "| model | params (total) | params (active/frame) | decoding | mode | WER % | CER % "
        "| RTF |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, decoding, summary in results:
        total, active = counts[model.name]
        for mode in MODES:
            result = summary.modes[mode]
            rows.append(
                f"| {model.name} | {total / 1e6:.2f} M | {active / 1e6:.2f} M | {decoding.label} "
                f"| {mode} "
                f"| {100 * result.wer.rate:.2f} | {100 * result.cer.rate:.2f} "
                f"| {result.rtf:.4f} |"
            )
    rtf_ratio = rtf_ratios(results)
    corpus = json.loads((out / "corpus" / "corpus.json").read_text())
    splits = ", ".join(
        f"{name} {split['utterances']} utterances / {split['hours']:.2f} h / "
        f"{len(split['speakers'])} speakers"
        for name, split in corpus["splits"].items()
    )
    vocabulary = corpus["options"].get("vocabulary")
    task = "open vocabulary" if vocabulary is None else f"closed {vocabulary}-word vocabulary"
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    figures = []
    for model in models:
        for png in sorted((out / "exp" / model.name / "plots").glob("*.png")):
            target = plots / f"{model.name}-{png.name}"
            shutil.copyfile(png, target)
            figures.append(f"![{model.name} {png.stem}](plots/{target.name})")
    report = "\n".join(
        [
            "# u2moe demo: U2++ MoE vs dense at small scale",
            "",
            f"Corpus ({task}): {splits} (test speakers and sentences unseen in training).",
            f"RTF = processing seconds / audio seconds, {DECODE_THREADS} CPU thread, test split; "
            f"weights packed once for CPU inference (float32, or int8 where noted); "
            f"streaming rows run the encoder chunk by chunk with caches. "
            f"Total time {seconds / 60:.1f} min (the stages' own times, training side by side).",
            "",
            *rows,
            "",
            *rtf_ratio,
            "",
            *figures,
            "",
        ]
    )
    (out / "REPORT.md").write_text(report)
    return report


def rtf_ratios(results: list) -> list[str]:
    """MoE / dense RTF per decoding and mode: the paper's claim in one line each."""
    by_key = {(model.name, decoding.name): summary for model, decoding, summary in results}
    lines = []
    for decoding in DECODINGS:
        moe, dense = by_key.get(("moe", decoding.name)), by_key.get(("dense", decoding.name))
        if moe is None or dense is None:
            continue
        ratios = ", ".join(
            f"{mode} {moe.modes[mode].rtf / dense.modes[mode].rtf:.2f}" for mode in MODES
        )
        lines.append(f"- RTF MoE / dense, {decoding.label}: {ratios}")
    return lines
