"""The corpus recipe: text rules, reserved material, splits, plan determinism, synthesis, resume."""

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from u2moe.cli import main as cli_main
from u2moe.corpus import voices as voices_module
from u2moe.corpus.recipe import (
    TINY_ENGINES,
    TINY_SIZES,
    Sizes,
    build_corpus,
    plan,
)
from u2moe.corpus.sentences import (
    closed_vocabulary,
    fortune_paragraphs,
    normalize,
    sentence_split,
    split_sentences,
    within_vocabulary,
    wordnet_examples,
)
from u2moe.corpus.synthesize import Job, Variation, run_jobs, wav_duration
from u2moe.corpus.voices import (
    CATALOGUE,
    RESERVED_SPEAKERS,
    TEST_SPEAKERS,
    available_voices,
)
from u2moe.data.manifest import read_manifest
from u2moe.errors import UserError

VOCAB = set(
    "the a cat sat on mat don't panic it's only test hello there she said softly well known "
    "fact of life smith went to town cafe is open today i have apples we ride rocket flew high "
    "and this that more time".split()
)


def reference_fraction(sentence: str) -> float:
    # The rule exactly as CORPUS.md states it.
    return int(hashlib.sha1(sentence.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Don't panic, it's only a test!", "don't panic it's only a test"),
        ("'Hello there,' she said softly.", "hello there she said softly"),
        ("A well-known fact of life.", "a well known fact of life"),
        ("The caf\u00e9 is open today.", "the cafe is open today"),
        ("The  cat\tsat on the mat", "the cat sat on the mat"),
        ("\u201cThe cat sat on the mat\u201d", "the cat sat on the mat"),
        ("I have 3 apples today", None),  # digits
        ("The cat sat on 50% of the mat", None),  # symbols
        ("The cat & the mat", None),
        ("The NASA rocket flew high", None),  # acronym
        ("Mr Smith went to town", None),  # abbreviation
        ("The cat sat", None),  # fewer than 4 words
        (" ".join(["the cat sat on the mat"] * 4), None),  # more than 22 words
        ("The zebra sat on the mat", None),  # word not in the dictionary
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw, VOCAB) == expected


def test_fortunes_split_into_sentences_without_attributions(tmp_path):
    path = tmp_path / "wisdom"
    path.write_text(
        "The cat sat on the mat.  Don't panic!\nIt's only a test.\n\t\t-- Somebody Famous\n%\n"
        "A well-known fact\nof life.\n%\n"
    )
    paragraphs = list(fortune_paragraphs(path))
    assert len(paragraphs) == 2 and "Famous" not in " ".join(paragraphs)
    assert split_sentences(paragraphs[0]) == [
        "The cat sat on the mat.",
        "Don't panic!",
        "It's only a test.",
    ]
    assert split_sentences(paragraphs[1]) == ["A well-known fact of life."]


def test_wordnet_examples_are_the_quoted_parts_of_glosses(tmp_path):
    path = tmp_path / "data.verb"
    path.write_text(
        '  1 This software and database is provided "as is"\n'
        '00001740 29 v 01 breathe 0 | draw air; "Breathe slowly"; "the patient is breathing"\n'
    )
    assert list(wordnet_examples(path)) == ["Breathe slowly", "the patient is breathing"]


def test_sha1_bands():
    counts = {None: 0, "dev": 0, "test": 0, "train": 0}
    for i in range(4000):
        sentence = f"sentence number {i} of the band test"
        fraction = reference_fraction(sentence)
        split = sentence_split(sentence)
        counts[split] += 1
        if fraction < 0.05:
            assert split is None
        elif fraction < 0.15:
            assert split in ("dev", "test")
        else:
            assert split == "train"
    # Every band is used, in proportion to its width.
    assert 120 < counts[None] < 280 and 120 < counts["dev"] < 280 and 120 < counts["test"] < 280


def test_catalogue_speakers():
    speakers = {v.speaker for v in CATALOGUE}
    assert not speakers & RESERVED_SPEAKERS
    names = " ".join(f"{v.id} {v.name}" for v in CATALOGUE).lower()
    assert "slt" not in names and "clb" not in names and "en-us_" not in names
    assert not any(v.engine == "pico" and v.name == "en-US" for v in CATALOGUE)
    by_id = {v.id: v for v in CATALOGUE}
    # One person behind several engines is one speaker, so lands in one split.
    for a, b in [("flite-kal16", "festival-kal"), ("flite-awb", "rhvoice-alan"),
                 ("mbrola-us2", "festival-us2"), ("mbrola-en1", "festival-en1")]:  # fmt: skip
        assert by_id[a].speaker == by_id[b].speaker and by_id[a].split == by_id[b].split
    # espeak-ng: the variant is the speaker, whatever the accent.
    f4 = {v.split for v in CATALOGUE if v.name.endswith("+f4")}
    assert f4 == {"dev"} and len([v for v in CATALOGUE if v.name.endswith("+f4")]) == 8
    # The test set is natural-sounding voices only.
    test_voices = [v for v in CATALOGUE if v.split == "test"]
    assert {v.speaker for v in test_voices} == TEST_SPEAKERS
    assert all(v.engine != "espeak-ng" for v in test_voices)
    assert all(v.name in ("mb-us2",) for v in test_voices if v.engine == "mbrola")


def synthetic_sentences(n: int) -> list[str]:
    rng = random.Random(0)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    return [" ".join(rng.choices(words, k=rng.randint(4, 12))) + f" {i}" for i in range(n)]


SENTENCES = synthetic_sentences(12000)
SMALL = Sizes(train_hours=0.5, dev_utts=80, test_utts=80)


def test_plan_keeps_reserved_material_out_and_splits_disjoint():
    utterances = plan(SENTENCES, list(CATALOGUE), seed=0, sizes=SMALL)
    by_split = {s: [u for u in utterances if u.split == s] for s in ("train", "dev", "test")}
    assert len(by_split["dev"]) == 80 and len(by_split["test"]) == 80
    assert len(by_split["train"]) > 300
    speakers = {s: {u.speaker for u in us} for s, us in by_split.items()}
    texts = {s: [u.job.text for u in us] for s, us in by_split.items()}
    for s in ("train", "dev", "test"):
        assert len(set(texts[s])) == len(texts[s])  # no sentence twice
        for other in ("train", "dev", "test"):
            if other != s:
                assert not speakers[s] & speakers[other]
                assert not set(texts[s]) & set(texts[other])
    assert not set().union(*speakers.values()) & RESERVED_SPEAKERS
    for u in utterances:
        fraction = reference_fraction(u.job.text)
        assert fraction >= 0.05
        assert (fraction >= 0.15) == (u.split == "train")
    assert len({u.key for u in utterances}) == len(utterances)
    # Dev and test spread over all their speakers; training over all engines but pico.
    assert speakers["test"] == TEST_SPEAKERS
    assert {u.job.engine for u in by_split["train"]} == {
        "espeak-ng", "mbrola", "flite", "festival", "rhvoice",
    }  # fmt: skip


def test_plan_refuses_reserved_speakers():
    slt = voices_module.Voice("flite-slt", "flite", "slt", "slt")
    with pytest.raises(ValueError, match="reserved"):
        plan(SENTENCES, [*CATALOGUE, slt], seed=0, sizes=SMALL)


def test_plan_is_deterministic_and_extends_with_size():
    first = plan(SENTENCES, list(CATALOGUE), seed=0, sizes=SMALL)
    assert plan(list(reversed(SENTENCES)), list(CATALOGUE), seed=0, sizes=SMALL) == first
    assert plan(SENTENCES, list(CATALOGUE), seed=1, sizes=SMALL) != first
    bigger = plan(SENTENCES, list(CATALOGUE), seed=0, sizes=Sizes(1.0, 100, 100))
    for split in ("train", "dev", "test"):
        small = [u for u in first if u.split == split]
        assert [u for u in bigger if u.split == split][: len(small)] == small


def test_training_split_reads_sentences_again_once_all_are_read():
    few = SENTENCES[:2000]  # about 1,700 training sentences, 1.6 h read once
    utterances = plan(few, list(CATALOGUE), seed=0, sizes=Sizes(2.0, 80, 80))
    texts = [u.job.text for u in utterances if u.split == "train"]
    pool = {s for s in few if reference_fraction(s) >= 0.15}
    assert set(texts[: len(pool)]) == pool  # every sentence once before any twice
    counts = Counter(texts)
    assert max(counts.values()) == 2  # 2 h is 1.2 times the pool
    # A reading again gets its own voice and variation, not a copy of the first.
    twice = next(text for text, n in counts.items() if n == 2)
    first, again = [u.job for u in utterances if u.job.text == twice]
    assert (first.engine_voice, first.variation) != (again.engine_voice, again.variation)
    assert first.key != again.key


def test_plan_without_an_engine():
    without = [v for v in CATALOGUE if v.engine != "festival"]
    utterances = plan(SENTENCES, without, seed=0, sizes=SMALL)
    assert "festival" not in {u.job.engine for u in utterances}
    assert plan(SENTENCES, without, seed=0, sizes=SMALL) == utterances
    only_train = [v for v in CATALOGUE if v.split == "train"]
    with pytest.raises(UserError, match="dev split"):
        plan(SENTENCES, only_train, seed=0, sizes=SMALL)
    with pytest.raises(UserError, match="sentences"):
        plan(SENTENCES[:500], list(CATALOGUE), seed=0, sizes=SMALL)


def letters(i: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'ba': a distinct word per number."""
    return (letters(i // 26) if i >= 26 else "") + chr(ord("a") + i % 26)


def test_closed_vocabulary_is_the_most_frequent_training_words():
    rng = random.Random(0)
    common = "alpha bravo charlie delta echo".split()
    sentences = [" ".join(rng.choices(common, k=6)) for _ in range(3000)]
    sentences += [f"alpha bravo charlie rare{letters(i)}" for i in range(3000)]
    sentences = sorted(set(sentences))
    # Each rare word occurs once; the common ones in every sentence of the train band.
    assert closed_vocabulary(sentences, 3) == {"alpha", "bravo", "charlie"}
    assert closed_vocabulary(sentences, 5) == set(common)
    kept = within_vocabulary(sentences, 5)
    assert kept == [s for s in sentences if "rare" not in s]
    assert within_vocabulary(sentences, None) == sentences
    utterances = plan(sentences, list(CATALOGUE), 0, Sizes(0.5, 80, 80, vocabulary=5))
    assert {u.split for u in utterances} == {"train", "dev", "test"}
    assert all(set(u.job.text.split()) <= set(common) for u in utterances)
    with pytest.raises(UserError, match="larger --vocabulary"):
        plan(sentences, list(CATALOGUE), 0, Sizes(0.5, 80, 80, vocabulary=2))


def test_missing_engine_is_reported_not_fatal(monkeypatch):
    real_which = voices_module.shutil.which
    monkeypatch.setattr(
        voices_module.shutil, "which", lambda cmd: None if cmd == "festival" else real_which(cmd)
    )
    available, unavailable = available_voices()
    assert {v.engine for v in unavailable} == {"festival"}
    assert "festival" not in {v.engine for v in available}


def test_every_engine_writes_16k_mono_16bit(tmp_path):
    v = Variation(None, None, tempo=1.1, cents=-100, gain_db=-6.0, pad_start=0.1, pad_end=0.2)
    e = Variation(160, 60, tempo=1.0, cents=0, gain_db=-3.0, pad_start=0.1, pad_end=0.2)
    text = "the cat sat on the mat"
    jobs = [
        Job("espeak", "espeak-ng", "en-gb-scotland+m3", text, e),
        Job("mbrola", "mbrola", "mb-en1", text, e),
        Job("flite", "flite", "kal16", text, v),
        Job("festival-a", "festival", "kal_diphone", text, v),  # one festival process
        Job("festival-b", "festival", "us1_mbrola", "don't panic", v),  # switches voice
        Job("pico", "pico", "en-GB", text, v),
        Job("rhvoice", "rhvoice", "bdl", text, v),
    ]
    results = {key: (duration, error) for key, duration, error in run_jobs(jobs, tmp_path, 1)}
    for job in jobs:
        duration, error = results[job.key]
        assert error is None
        info = sf.info(tmp_path / f"{job.key}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(duration)
        assert 0.6 < duration < 4.0
        audio, _ = sf.read(tmp_path / f"{job.key}.wav")
        assert abs(audio).max() == pytest.approx(10 ** (job.variation.gain_db / 20), rel=0.02)
        pad = int(job.variation.pad_start * 16000)
        assert abs(audio[:pad]).max() == 0  # the padding is silence


def test_festival_error_is_reported_and_the_next_job_works(tmp_path):
    v = Variation(None, None, tempo=1.0, cents=0, gain_db=-3.0, pad_start=0.1, pad_end=0.1)
    jobs = [
        Job("bad", "festival", "no_such_voice", "the cat sat on the mat", v),
        Job("good", "festival", "ked_diphone", "the cat sat on the mat", v),
    ]
    (bad, _, error), good = run_jobs(jobs, tmp_path, workers=1)
    assert bad == "bad" and "festival" in error and not (tmp_path / "bad.wav").exists()
    assert good[2] is None and wav_duration(tmp_path / "good.wav") > 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.wav"]


def test_wav_duration_rejects_broken_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, [0.1] * 1600, 16000, subtype="PCM_16")
    assert wav_duration(good) == pytest.approx(0.1)
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "truncated": data[:-100],
        "garbage": b"RIFF" + bytes(100),
    }
    for name, content in cases.items():
        (tmp_path / f"{name}.wav").write_bytes(content)
        assert wav_duration(tmp_path / f"{name}.wav") is None, name
    sf.write(tmp_path / "rate.wav", [0.1] * 1600, 8000, subtype="PCM_16")
    sf.write(tmp_path / "float.wav", [0.1] * 1600, 16000, subtype="FLOAT")
    assert wav_duration(tmp_path / "rate.wav") is None
    assert wav_duration(tmp_path / "float.wav") is None
    assert wav_duration(tmp_path / "missing.wav") is None


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_corpus_end_to_end_and_resume(tmp_path):
    out = tmp_path / "corpus"
    summary = build_corpus(out, TINY_SIZES, seed=0, engines=TINY_ENGINES, workers=2)
    assert summary["failed"] == []
    manifests = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert len(manifests["dev"]) == 6 and len(manifests["test"]) == 6
    assert 15 <= len(manifests["train"]) <= 40
    lines = [x for lines in manifests.values() for x in lines]
    for x in lines:
        assert set(x) == {"key", "audio", "text", "duration", "speaker", "engine", "voice"}
        assert x["engine"] in TINY_ENGINES and x["audio"] == f"wavs/{x['key']}.wav"
        info = sf.info(out / x["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(x["duration"], abs=1e-4)
    speakers = {s: {x["speaker"] for x in m} for s, m in manifests.items()}
    assert not speakers["train"] & (speakers["dev"] | speakers["test"])
    assert not speakers["dev"] & speakers["test"]
    # The data pipeline reads the manifests as they are.
    read = list(read_manifest(out / "dev.jsonl"))
    assert [u.key for u in read] == [x["key"] for x in manifests["dev"]]
    assert all(Path(u.audio).is_file() and u.extra["speaker"] for u in read)
    corpus = json.loads((out / "corpus.json").read_text())
    assert corpus["seed"] == 0 and corpus["splits"]["dev"]["utterances"] == 6
    hours = sum(x["duration"] for x in manifests["train"]) / 3600
    assert corpus["splits"]["train"]["hours"] == pytest.approx(hours, abs=1e-3)

    # Interrupted run: one file gone, one truncated, a scrap of a half-written file.
    wavs = sorted((out / "wavs").glob("*.wav"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in wavs}
    deleted, truncated = wavs[0], wavs[1]
    deleted.unlink()
    truncated.write_bytes(before[truncated.name][1][:1000])
    (out / "wavs" / "x.partial.wav").write_bytes(b"RIFF")
    summary = build_corpus(out, TINY_SIZES, seed=0, engines=TINY_ENGINES, workers=2)
    assert summary["synthesized_this_run"] == 2
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "wavs").iterdir()}
    assert set(after) == set(before)
    for name, (mtime, data) in after.items():
        assert data == before[name][1]  # redone files are identical: synthesis is deterministic
        if name not in (deleted.name, truncated.name):
            assert mtime == before[name][0]
    assert read_jsonl(out / "train.jsonl") == manifests["train"]


def test_cli(tmp_path, capsys):
    assert cli_main(["corpus", "--list-voices"]) == 0
    listing = capsys.readouterr().out
    assert "flite-kal16" in listing and "rhvoice-bdl" in listing and "CC-BY-NC-ND" in listing
    assert cli_main(["corpus", "--out", str(tmp_path), "--engines", "sam"]) == 2
    assert "unknown engine" in capsys.readouterr().err
    assert cli_main(["corpus", "--out", str(tmp_path), "--vocabulary", "many"]) == 2
    assert "--vocabulary must be a positive number" in capsys.readouterr().err
    assert cli_main(["corpus", "--list-voices"]) == 0
