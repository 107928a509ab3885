"""Planning and building the corpus: which sentence, read by which voice, with which variation.

The plan is a pure function of (sentences, available voices, seed, sizes): never of the
number of workers or of the files already on disk. Each split draws from its own random
stream, one utterance after another, so a larger size extends a plan without changing its
beginning. Files of an earlier run are kept when their job is unchanged and they read back
whole; everything else is made (again).
"""

import dataclasses
import json
import logging
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from u2moe.corpus.sentences import (
    load_sentences,
    missing_sources,
    sentence_split,
    within_vocabulary,
)
from u2moe.corpus.synthesize import PARTIAL_SUFFIX, Job, Variation, run_jobs, wav_duration
from u2moe.corpus.voices import (
    ENGINES,
    RESERVED_SPEAKERS,
    TRAIN_ENGINE_WEIGHTS,
    Voice,
    available_voices,
)
from u2moe.data.files import write_text_atomic
from u2moe.errors import UserError
from u2moe.progress import progress

log = logging.getLogger("u2moe.corpus")

SPLITS = ("train", "dev", "test")
ESPEAK_DRIVEN = ("espeak-ng", "mbrola")

# Variation ranges (CORPUS.md): enough to vary delivery, not so much that speech degrades.
ESPEAK_SPEED = (140, 200)  # words per minute; espeak-ng's default is 175
ESPEAK_PITCH = (25, 75)  # 0-99; default 50
TEMPO = (0.85, 1.15)  # sox tempo for the other engines
CENTS = (-250, 250)  # sox pitch shift
GAIN_DB = (-12.0, -1.0)  # peak level
PAD = (0.05, 0.4)  # seconds of silence at each end

# For planning training hours before any audio exists; manifests use the files' lengths.
SECONDS_PER_WORD = 0.33  # measured over the engines' default rates


@dataclass(frozen=True)
class Sizes:
    """How much audio, and how large a task: `vocabulary` limits every split to sentences of
    the N most frequent training words (None: the open 26.8k-word vocabulary)."""

    train_hours: float
    dev_utts: int
    test_utts: int
    vocabulary: int | None = None


# A closed 2,000-word task, the scale that a few hours of audio can learn (DARPA's Resource
# Management had 1,000 words and 4 h): with the open vocabulary, a third of the test
# words occur fewer than 5 times in 3 h of training, and the model guesses their spelling.
DEFAULT_SIZES = Sizes(train_hours=3.0, dev_utts=300, test_utts=300, vocabulary=2000)
# For tests and smoke runs: a few dozen utterances from the fast engines.
TINY_SIZES = Sizes(train_hours=0.02, dev_utts=6, test_utts=6, vocabulary=DEFAULT_SIZES.vocabulary)
TINY_ENGINES = ("espeak-ng", "flite")


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: the job that makes its audio and the labels of its manifest line."""

    split: str
    speaker: str
    voice: str  # Voice.id
    job: Job

    @property
    def key(self) -> str:
        return self.job.key


def draw_variation(rng: random.Random, engine: str) -> Variation:
    if engine in ESPEAK_DRIVEN:
        speed, pitch, tempo, cents = rng.randint(*ESPEAK_SPEED), rng.randint(*ESPEAK_PITCH), 1.0, 0
    else:
        speed, pitch = None, None
        tempo, cents = round(rng.uniform(*TEMPO), 3), rng.randint(*CENTS)
    return Variation(
        speed=speed,
        pitch=pitch,
        tempo=tempo,
        cents=cents,
        gain_db=round(rng.uniform(*GAIN_DB), 1),
        pad_start=round(rng.uniform(*PAD), 3),
        pad_end=round(rng.uniform(*PAD), 3),
    )


def estimated_seconds(text: str, engine: str, v: Variation) -> float:
    speech = len(text.split()) * SECONDS_PER_WORD
    speech *= 175 / v.speed if engine in ESPEAK_DRIVEN else 1 / v.tempo
    return speech + v.pad_start + v.pad_end


def _voice_picker(split: str, voices: list[Voice]):
    """A function rng -> Voice for one split.

    train: an engine by TRAIN_ENGINE_WEIGHTS, then one of its speakers, then one of that
    speaker's voices in that engine (an espeak accent), each uniformly; so the many espeak
    variants do not crowd out the few natural voices.
    dev, test: a speaker uniformly, then one of their voices; the held-out speakers are few
    and chosen by hand, so each gets an equal share.
    """
    by_group: dict[str, dict[str, list[Voice]]] = defaultdict(lambda: defaultdict(list))
    for v in voices:
        by_group[v.engine if split == "train" else ""][v.speaker].append(v)
    groups = sorted(by_group)
    weights = [TRAIN_ENGINE_WEIGHTS[g] if split == "train" else 1.0 for g in groups]
    if not any(weights):
        raise UserError(f"no available voice for the {split} split (see --list-voices)")

    def pick(rng: random.Random) -> Voice:
        speakers = by_group[rng.choices(groups, weights)[0]]
        return rng.choice(speakers[rng.choice(sorted(speakers))])

    return pick


def plan(sentences: list[str], voices: list[Voice], seed: int, sizes: Sizes) -> list[Utterance]:
    """The whole corpus as a list of utterances, train then dev then test."""
    if reserved := {v.speaker for v in voices} & RESERVED_SPEAKERS:
        raise ValueError(f"reserved speakers offered to the plan: {sorted(reserved)}")
    bands: dict[str, list[str]] = {split: [] for split in SPLITS}
    for sentence in sorted(within_vocabulary(set(sentences), sizes.vocabulary)):
        if (split := sentence_split(sentence)) is not None:
            bands[split].append(sentence)
    utterances = []
    for split in SPLITS:
        rng = random.Random(f"u2moe-corpus:{seed}:{split}")
        pool = bands[split]
        pick = _voice_picker(split, [v for v in voices if v.split == split])
        budget = sizes.train_hours * 3600 if split == "train" else None
        wanted = {"dev": sizes.dev_utts, "test": sizes.test_utts}.get(split)
        total = 0.0
        for index, text in enumerate(_readings(pool, rng, again=budget is not None)):
            if (budget is not None and total >= budget) or index == wanted:
                break
            voice = pick(rng)
            variation = draw_variation(rng, voice.engine)
            total += estimated_seconds(text, voice.engine, variation)
            key = f"{voice.speaker}_{split}_{index:05d}"
            job = Job(key, voice.engine, voice.name, text, variation)
            utterances.append(Utterance(split, voice.speaker, voice.id, job))
        else:  # only an empty training pool, or fewer dev/test sentences than wanted
            if wanted is None or len(pool) < wanted:
                raise UserError(
                    f"only {len(pool)} {split} sentences are available; ask for a smaller size"
                    + ("" if sizes.vocabulary is None else " or a larger --vocabulary")
                )
    return utterances


def _readings(pool: list[str], rng: random.Random, again: bool) -> Iterator[str]:
    """The pool's sentences in a random order; with `again`, once all have been read, a new
    order of all of them, and so on (each reading draws its own voice and variation), so
    the training audio is not capped by the number of sentences of a closed vocabulary."""
    while pool:
        order = pool[:]
        rng.shuffle(order)
        yield from order
        if not again:
            return


def _plan_line(u: Utterance) -> dict:
    return {"split": u.split, "speaker": u.speaker, "voice": u.voice, **dataclasses.asdict(u.job)}


def _read_previous_plan(path: Path) -> dict[str, dict]:
    """key -> planned job of the last run; an unreadable plan means nothing can be kept."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return {line["key"]: line for line in lines}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _interleave(todo: list[Utterance], seed: int) -> list[Utterance]:
    """Work order: shuffled, so slow festival/RHVoice jobs spread over the whole run and the
    progress bar's estimate is fair. Order does not affect any file."""
    order = todo[:]
    random.Random(f"u2moe-corpus-order:{seed}").shuffle(order)
    return order


def build_corpus(
    out: Path,
    sizes: Sizes = DEFAULT_SIZES,
    seed: int = 0,
    engines: tuple[str, ...] = ENGINES,
    workers: int | None = None,
) -> dict:
    """Plan, synthesize what is missing, write the manifests and corpus.json; the summary."""
    if missing := missing_sources():
        raise UserError(f"text packages not installed ({', '.join(missing)}); run `make setup`")
    voices, unavailable = available_voices(engines)
    if unavailable:
        log.warning(
            "%d voices not installed (`make setup` installs them), planning without: %s",
            len(unavailable), " ".join(v.id for v in unavailable),
        )  # fmt: skip
    if not voices:
        raise UserError(f"no voice of {', '.join(engines)} is installed; run `make setup`")
    workers = workers or os.cpu_count() or 1
    sentences = load_sentences()
    log.info("%d sentences from the text packages", len(sentences))
    options = {**dataclasses.asdict(sizes), "engines": list(engines)}
    wav_dir = out / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    utterances = plan(sentences, voices, seed, sizes)
    plan_path = out / "plan.jsonl"
    previous = _read_previous_plan(plan_path)

    durations: dict[str, float] = {}
    todo = []
    for u in utterances:
        path = wav_dir / f"{u.key}.wav"
        duration = wav_duration(path) if previous.get(u.key) == _plan_line(u) else None
        if duration is None:
            path.unlink(missing_ok=True)  # of another plan, or broken
            todo.append(u)
        else:
            durations[u.key] = duration
    keys = {u.key for u in utterances}
    for path in wav_dir.iterdir():  # scraps of a killed run, files no plan mentions
        if path.name.endswith(PARTIAL_SUFFIX) or path.stem not in keys:
            path.unlink()
    write_text_atomic(plan_path, "".join(json.dumps(_plan_line(u)) + "\n" for u in utterances))
    log.info(
        "%s: %d utterances planned, %d already made, %d to synthesize with %d workers",
        out, len(utterances), len(durations), len(todo), workers,
    )  # fmt: skip

    started = time.monotonic()
    failures = []
    jobs = [u.job for u in _interleave(todo, seed)]
    results = progress(run_jobs(jobs, wav_dir, workers), len(jobs), "synthesizing", "utt")
    with logging_redirect_tqdm():  # warnings on their own lines, not inside the bar
        for key, duration, error in results:
            if error is None:
                durations[key] = duration
            else:
                failures.append(key)
                log.warning("%s failed: %s", key, error)
    elapsed = time.monotonic() - started

    summary = _write_manifests(out, utterances, durations)
    summary.update(
        seed=seed,
        options=options,
        engines=sorted({v.engine for v in voices}),
        unavailable_voices=[v.id for v in unavailable],
        failed=sorted(failures),
        synthesized_this_run=len(jobs) - len(failures),
        synthesis_seconds=round(elapsed, 1),
    )
    write_text_atomic(out / "corpus.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_manifests(out: Path, utterances: list[Utterance], durations: dict) -> dict:
    """`<split>.jsonl` with the utterances whose audio exists; per-split statistics."""
    splits = {}
    for split in SPLITS:
        made = [u for u in utterances if u.split == split and u.key in durations]
        lines = [
            {
                "key": u.key,
                "audio": f"wavs/{u.key}.wav",
                "text": u.job.text,
                "duration": round(durations[u.key], 4),
                "speaker": u.speaker,
                "engine": u.job.engine,
                "voice": u.voice,
            }
            for u in made
        ]
        write_text_atomic(out / f"{split}.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
        splits[split] = {
            "utterances": len(made),
            "hours": round(sum(x["duration"] for x in lines) / 3600, 3),
            "speakers": sorted({u.speaker for u in made}),
            "engines": dict(sorted(Counter(u.job.engine for u in made).items())),
        }
    return {"splits": splits}
