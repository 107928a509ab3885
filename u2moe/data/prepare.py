"""`u2moe prepare`: check a corpus, write normalized manifests, CMVN statistics and units.

Every utterance's audio is decoded once (to find broken files and measure durations); the
fbank of a random sample of training utterances gives the global CMVN statistics; the
tokenizer is trained on the usable training texts. Problems are counted per reason. Sets are
streamed through temporary files, so memory does not grow with the corpus.

A set given as a tar shard list is checked shard by shard (one task per shard; the CMVN sample
is the first cmvn_utterances / shards utterances of every shard) and stays in its shards: the
output is `<set>.list`, the list with local paths made absolute, beside the problems found.
"""

import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from u2moe.data.audio import SAMPLE_RATE, AudioError, decode_audio, load_audio
from u2moe.data.cmvn import CmvnStats
from u2moe.data.config import DataConfig, FeatureConfig
from u2moe.data.features import compute_fbank
from u2moe.data.files import atomic_path, write_text_atomic
from u2moe.data.manifest import BadEntry, Manifest, Utterance, detect_data_type
from u2moe.data.shards import ShardList, read_shard
from u2moe.data.skips import SkipStats
from u2moe.data.tokenizer import train_tokenizer
from u2moe.errors import UserError
from u2moe.progress import progress

CMVN_FEATURE_KEYS = ("num_mel_bins", "frame_length", "frame_shift", "log_floor")


@dataclass
class SetReport:
    """What `prepare` found in one source."""

    name: str
    source: str
    utterances: int = 0
    hours: float = 0.0
    problems: SkipStats = field(default_factory=SkipStats)
    cmvn_utterances: int = 0  # whose fbank went into the CMVN statistics

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "utterances": self.utterances,
            "hours": round(self.hours, 3),
            "skipped": self.problems.total,
            "problems": self.problems.as_dict(),
        }


def prepare(
    train: str,
    dev: str,
    tests: list[str],
    out_dir: str | Path,
    cfg: DataConfig,
    cmvn_utterances: int = 20000,
    jobs: int = 2,
    seed: int = 0,
    data_type: str = "auto",
) -> dict[str, SetReport]:
    """Write `out_dir/{train,dev,<test>}.jsonl` (`.list` for a shard list), `global_cmvn`,
    `units.txt` (+ `bpe.model`) and `summary.json`; return the report per set.

    cmvn_utterances: size of the random sample of training utterances for CMVN (0: all).
    data_type: of every source, `raw`, `shard`, `lhotse` or `auto` (told apart per source).
    """
    out_dir = Path(out_dir)
    sources = {"train": train, "dev": dev, **_test_names(tests)}
    manifests = {name: _open(source, data_type) for name, source in sources.items()}  # fail early
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = {name: SetReport(name, str(source)) for name, source in sources.items()}

    n_train = len(manifests["train"])
    if isinstance(manifests["train"], ShardList):  # utterances per shard, from the front
        sample = -(-cmvn_utterances // n_train) if cmvn_utterances else None
    else:
        sample_size = min(cmvn_utterances or n_train, n_train)
        sample = set(np.random.default_rng(seed).permutation(n_train)[:sample_size].tolist())
        reports["train"].cmvn_utterances = sample_size
    cmvn = CmvnStats(cfg.features.num_mel_bins)
    checked = {name: out_dir / f".{name}.checked.jsonl" for name in sources}
    try:
        for name, manifest in manifests.items():
            with checked[name].open("w", encoding="utf-8") as f:
                stats_sample = sample if name == "train" else _NO_SAMPLE[type(manifest)]
                for utterance in _check_set(manifest, reports[name], cfg, stats_sample, cmvn, jobs):
                    f.write(json.dumps(utterance.to_json(), ensure_ascii=False) + "\n")
        if cmvn.frames == 0:
            problems = reports["train"].problems.summary()
            raise UserError(f"{train}: no usable utterance in the CMVN sample ({problems})")

        texts = (json.loads(line)["text"] for line in checked["train"].open(encoding="utf-8"))
        tokenizer = train_tokenizer(texts, cfg.tokenizer, out_dir)
        for name, path in checked.items():
            report = reports[name]
            shards = manifests[name] if isinstance(manifests[name], ShardList) else None
            with atomic_path(out_dir / f"{name}.{'list' if shards else 'jsonl'}") as tmp:
                out = tmp.open("w", encoding="utf-8")
                for line in path.open(encoding="utf-8"):
                    line_dict = json.loads(line)
                    if not tokenizer.has_known_token(tokenizer.encode(line_dict["text"])):
                        report.problems.add(line_dict["key"], "no known token")
                        continue
                    report.utterances += 1
                    report.hours += line_dict["duration"] / 3600
                    if not shards:
                        out.write(line)
                if shards:  # the utterances stay in their shards; training skips the bad ones
                    out.writelines(f"{_absolute(entry)}\n" for entry in shards.entries)
                out.close()
    finally:
        for path in checked.values():
            path.unlink(missing_ok=True)
    cmvn.save(out_dir / "global_cmvn")
    summary = {name: report.as_dict() for name, report in reports.items()}
    summary["tokenizer"] = {"type": cfg.tokenizer.type, "vocab_size": tokenizer.vocab_size}
    summary["cmvn"] = {
        "utterances": reports["train"].cmvn_utterances,
        "frames": cmvn.frames,
        "features": cmvn_features(cfg.features),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return reports


def cmvn_features(cfg: FeatureConfig) -> dict:
    """The feature options the CMVN statistics depend on (dither is for training only)."""
    return {key: getattr(cfg, key) for key in CMVN_FEATURE_KEYS}


def check_cmvn_features(data_dir: Path, cfg: FeatureConfig, name: str) -> None:
    """Refuse a config whose fbank differs from the one the data's CMVN was measured on.

    Data prepared by other tools (or before this was recorded) has nothing to compare.
    """
    summary_path = data_dir / "summary.json"
    if not summary_path.is_file():
        return
    try:
        recorded = json.loads(summary_path.read_text()).get("cmvn", {}).get("features")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{summary_path}: not a summary written by u2moe prepare ({e})") from e
    if recorded is None:
        return
    for key, value in cmvn_features(cfg).items():
        if recorded.get(key) != value:
            raise UserError(
                f"{name}: data.features.{key} is {value}, but {data_dir / 'global_cmvn'} was "
                f"measured with {recorded.get(key)} ({summary_path}); prepare the data again "
                "with this config"
            )


def _test_names(tests: list[str]) -> dict[str, str]:
    """One test set is `test`; several are named after their files or directories."""
    if len(tests) == 1:
        return {"test": tests[0]}
    names = {}
    for source in tests:
        name = Path(source).stem if Path(source).is_file() else Path(source).name
        if name in names or name in ("train", "dev"):
            raise UserError(f"{source}: test set name '{name}' is taken; rename the source")
        names[name] = source
    return names


def _open(source: str, data_type: str) -> Manifest | ShardList:
    if (detect_data_type(source) if data_type == "auto" else data_type) == "shard":
        return ShardList(source)
    return Manifest(source, data_type)


def _absolute(entry: str) -> str:
    """A local shard path made absolute (the prepared list is read from anywhere)."""
    if entry.startswith(("pipe:", "http://", "https://")):
        return entry
    return str(Path(entry).absolute())


# The CMVN sample of a set that gives none: no index (manifest), 0 per shard (shard list).
_NO_SAMPLE = {Manifest: set(), ShardList: 0}

# A checked utterance: the entry and a reason, or its duration in seconds.
Checked = list[tuple[Utterance | BadEntry, str | float]]


def _check_set(
    source: Manifest | ShardList,
    report: SetReport,
    cfg: DataConfig,
    cmvn_sample: set[int] | int | None,
    cmvn: CmvnStats,
    jobs: int,
) -> Iterator[Utterance]:
    """Decode every utterance's audio in `jobs` processes; yield the usable ones, in order,
    with whitespace-normalized text and measured duration.

    cmvn_sample: manifest indices, or (shard list) utterances per shard, None for all."""
    seen: set[str] = set()
    shards = isinstance(source, ShardList)
    samples = (cmvn_sample if shards else i in cmvn_sample for i in range(len(source)))
    tasks = ((i, cfg, sample) for i, sample in enumerate(samples))
    check, unit = (_check_shard, "shard") if shards else (_check_one, "utt")
    bar = progress(total=len(source), desc=f"prepare {report.name}", unit=unit)
    # spawn, not fork: forking a process whose torch/OpenMP threads are running can deadlock
    pool = multiprocessing.get_context("spawn").Pool(jobs, _set_source, (source,))
    with pool:
        for results, stats, sampled in pool.imap(check, tasks, chunksize=1 if shards else 16):
            bar.update()
            kept = []
            for entry, result in results:
                key = entry.key
                if isinstance(result, str) or key in seen:
                    report.problems.add(key, "duplicate key" if key in seen else result)
                    continue
                seen.add(key)
                entry.duration = result
                entry.text = " ".join(entry.text.split())
                kept.append(entry)
            # a manifest entry's statistics count only if it is kept (not a duplicate); a
            # shard's are summed in its task, duplicates included
            if stats is not None and (shards or kept):
                cmvn.merge(stats)
                report.cmvn_utterances += sampled  # manifests: counted beforehand
            yield from kept
    bar.close()


_source: Manifest | ShardList | None = None  # the set being checked, in each worker process


def _set_source(source: Manifest | ShardList) -> None:
    global _source
    _source = source
    os.environ["OMP_NUM_THREADS"] = "1"


def _check_one(task: tuple[int, DataConfig, bool]) -> tuple[Checked, CmvnStats | None, int]:
    """One manifest entry: ([(entry, reason or duration)], its CmvnStats if sampled, 0)."""
    index, cfg, with_stats = task
    entry = _source[index]
    if isinstance(entry, BadEntry):
        return [(entry, entry.reason)], None, 0
    stats = CmvnStats(cfg.features.num_mel_bins) if with_stats else None
    result = _check_audio(partial(load_audio, entry.audio, entry.start, entry.end), stats, cfg)
    return [(entry, result)], stats, 0


def _check_shard(task: tuple[int, DataConfig, int | None]) -> tuple[Checked, CmvnStats, int]:
    """One shard: [(utterance or bad entry, reason or duration)], CMVN of its first `sample`
    utterances (None: all), how many usable ones that CMVN holds."""
    index, cfg, sample = task
    stats = CmvnStats(cfg.features.num_mel_bins)
    sampled_count = 0
    results: Checked = []
    for item in read_shard(_source[index], index):
        if isinstance(item, BadEntry):
            results.append((item, item.reason))
            continue
        sampled = stats if sample is None or item.position < sample else None
        duration = _check_audio(partial(decode_audio, item.audio, item.name), sampled, cfg)
        sampled_count += sampled is not None and not isinstance(duration, str)
        results.append((Utterance(item.key, _source[index], item.text), duration))
    return results, stats, sampled_count


def _check_audio(read, stats: CmvnStats | None, cfg: DataConfig) -> str | float:
    """The duration of `read()`'s audio (and its fbank added to `stats`), or the reason."""
    try:
        samples = read()
    except AudioError as e:
        return e.reason
    except Exception as e:  # one bad file must not stop the whole preparation
        return f"audio error {type(e).__name__}"
    if stats is not None:
        stats.add(compute_fbank(samples, 0.0, cfg.features))
    return len(samples) / SAMPLE_RATE
