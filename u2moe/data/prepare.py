"""`u2moe prepare`: check a corpus, write normalized manifests, CMVN statistics and units.

Every utterance's audio is decoded once (to find broken files and measure durations); the
fbank of a random sample of training utterances gives the global CMVN statistics; the
tokenizer is trained on the usable training texts. Problems are counted per reason. Sets are
streamed through temporary files, so memory does not grow with the corpus.
"""

import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from u2moe.data.audio import SAMPLE_RATE, AudioError, load_audio
from u2moe.data.cmvn import CmvnStats
from u2moe.data.config import DataConfig, FeatureConfig
from u2moe.data.features import compute_fbank
from u2moe.data.files import atomic_path, write_text_atomic
from u2moe.data.manifest import BadEntry, Manifest, Utterance
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
) -> dict[str, SetReport]:
    """Write `out_dir/{train,dev,<test>}.jsonl`, `global_cmvn`, `units.txt` (+ `bpe.model`)
    and `summary.json`; return the report per set.

    cmvn_utterances: size of the random sample of training utterances for CMVN (0: all).
    """
    out_dir = Path(out_dir)
    sources = {"train": train, "dev": dev, **_test_names(tests)}
    manifests = {name: Manifest(source) for name, source in sources.items()}  # fail early
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = {name: SetReport(name, str(source)) for name, source in sources.items()}

    n_train = len(manifests["train"])
    sample_size = min(cmvn_utterances or n_train, n_train)
    sample = set(np.random.default_rng(seed).permutation(n_train)[:sample_size].tolist())
    cmvn = CmvnStats(cfg.features.num_mel_bins)
    checked = {name: out_dir / f".{name}.checked.jsonl" for name in sources}
    try:
        for name, manifest in manifests.items():
            with checked[name].open("w", encoding="utf-8") as f:
                stats_sample = sample if name == "train" else set()
                for utterance in _check_set(manifest, reports[name], cfg, stats_sample, cmvn, jobs):
                    f.write(json.dumps(utterance.to_json(), ensure_ascii=False) + "\n")
        if cmvn.frames == 0:
            problems = reports["train"].problems.summary()
            raise UserError(f"{train}: no usable utterance in the CMVN sample ({problems})")

        texts = (json.loads(line)["text"] for line in checked["train"].open(encoding="utf-8"))
        tokenizer = train_tokenizer(texts, cfg.tokenizer, out_dir)
        for name, path in checked.items():
            report = reports[name]
            with atomic_path(out_dir / f"{name}.jsonl") as tmp, tmp.open("w") as out:
                for line in path.open(encoding="utf-8"):
                    line_dict = json.loads(line)
                    if not tokenizer.has_known_token(tokenizer.encode(line_dict["text"])):
                        report.problems.add(line_dict["key"], "no known token")
                        continue
                    report.utterances += 1
                    report.hours += line_dict["duration"] / 3600
                    out.write(line)
    finally:
        for path in checked.values():
            path.unlink(missing_ok=True)
    cmvn.save(out_dir / "global_cmvn")
    summary = {name: report.as_dict() for name, report in reports.items()}
    summary["tokenizer"] = {"type": cfg.tokenizer.type, "vocab_size": tokenizer.vocab_size}
    summary["cmvn"] = {
        "utterances": sample_size,
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


def _check_set(
    manifest: Manifest,
    report: SetReport,
    cfg: DataConfig,
    cmvn_sample: set[int],
    cmvn: CmvnStats,
    jobs: int,
) -> Iterator[Utterance]:
    """Decode every utterance's audio in `jobs` processes; yield the usable ones, in order,
    with whitespace-normalized text and measured duration."""
    seen: set[str] = set()
    tasks = ((i, cfg, i in cmvn_sample) for i in range(len(manifest)))
    bar = progress(total=len(manifest), desc=f"prepare {report.name}", unit="utt")
    # spawn, not fork: forking a process whose torch/OpenMP threads are running can deadlock
    pool = multiprocessing.get_context("spawn").Pool(jobs, _set_manifest, (manifest,))
    with pool:
        for index, result in pool.imap(_check_one, tasks, chunksize=16):
            bar.update()
            entry = manifest[index]
            key = entry.key
            if isinstance(result, str) or key in seen:
                report.problems.add(key, "duplicate key" if key in seen else result)
                continue
            seen.add(key)
            entry.duration, stats = result
            if stats is not None:
                cmvn.merge(stats)
            yield entry
    bar.close()


_manifest: Manifest | None = None  # the set being checked, in each worker process


def _set_manifest(manifest: Manifest) -> None:
    global _manifest
    _manifest = manifest
    os.environ["OMP_NUM_THREADS"] = "1"


def _check_one(task: tuple[int, DataConfig, bool]) -> tuple[int, str | tuple]:
    """(index, reason) for an unusable utterance, else (index, (duration, CmvnStats or None))."""
    index, cfg, with_stats = task
    entry = _manifest[index]
    if isinstance(entry, BadEntry):
        return index, entry.reason
    try:
        samples = load_audio(entry.audio, entry.start, entry.end)
    except AudioError as e:
        return index, e.reason
    except Exception as e:  # one bad file must not stop the whole preparation
        return index, f"audio error {type(e).__name__}"
    stats = None
    if with_stats:
        stats = CmvnStats(cfg.features.num_mel_bins)
        stats.add(compute_fbank(samples, 0.0, cfg.features))
    return index, (len(samples) / SAMPLE_RATE, stats)
