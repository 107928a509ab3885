"""Manifest readers: JSON lines, WeNet data.list, Kaldi data directories, bad lines."""

import json
import os
import pickle

import pytest

from u2moe.data.manifest import BadEntry, Manifest, check_unique_keys, read_manifest
from u2moe.data.skips import SkipStats
from u2moe.errors import UserError


def write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def test_jsonl_relative_paths_and_extra_fields(tmp_path):
    (tmp_path / "sub").mkdir()
    write_lines(
        tmp_path / "sub" / "m.jsonl",
        [
            {"key": "a", "audio": "wavs/a.wav", "text": "hello", "duration": 1.5, "speaker": "s1"},
            "",  # blank lines are not entries
            {"key": "b", "audio": "/abs/b.flac", "text": "world", "start": 0.5, "end": 2.0},
        ],
    )
    a, b = read_manifest(tmp_path / "sub" / "m.jsonl")
    assert a.audio == str(tmp_path / "sub" / "wavs" / "a.wav")
    assert (a.key, a.text, a.duration, a.extra) == ("a", "hello", 1.5, {"speaker": "s1"})
    assert (b.audio, b.start, b.end, b.duration) == ("/abs/b.flac", 0.5, 2.0, 1.5)
    assert a.to_json() == {
        "key": "a",
        "audio": a.audio,
        "text": "hello",
        "duration": 1.5,
        "speaker": "s1",
    }


def test_wenet_data_list(tmp_path):
    write_lines(tmp_path / "data.list", [{"key": "u1", "wav": "/d/u1.wav", "txt": "a b"}])
    (utt,) = read_manifest(tmp_path / "data.list")
    assert (utt.key, utt.audio, utt.text, utt.duration) == ("u1", "/d/u1.wav", "a b", None)


def test_kaldi_dir_with_segments_and_speakers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("rec1 audio/rec1.wav\nrec2 flac -c -d -s rec2.flac |\n")
    (kaldi / "segments").write_text("u1 rec1 0.0 1.5\nu2 rec1 1.5 -1\nu3 rec2 0 2\nu4 rec9 0 1\n")
    (kaldi / "text").write_text("u1 hello world\nu2 good bye\nu3 hi\nu4 lost\nu5 no segment\n")
    (kaldi / "utt2spk").write_text("u1 spk1\nu2 spk1\nu3 spk2\n")
    entries = list(Manifest(kaldi))
    u1, u2, u3 = entries[:3]
    assert (u1.audio, u1.start, u1.end, u1.duration) == (
        os.path.join(tmp_path, "audio/rec1.wav"),
        0.0,
        1.5,
        1.5,
    )
    assert (u1.text, u1.extra) == ("hello world", {"speaker": "spk1"})
    assert (u2.start, u2.end, u2.duration) == (1.5, None, None)
    assert u3.audio == "flac -c -d -s rec2.flac |"
    assert entries[3:] == [
        BadEntry("u4", "no audio in wav.scp"),
        BadEntry("u5", "no valid line in segments"),
    ]


def test_kaldi_dir_without_segments(tmp_path):
    (tmp_path / "wav.scp").write_text("u1 /d/u1.wav\nu2 /d/u2.wav\n")
    (tmp_path / "text").write_text("u1 one\nu3 three\n")
    stats = SkipStats()
    (u1,) = read_manifest(tmp_path, stats)
    assert (u1.key, u1.audio, u1.text) == ("u1", "/d/u1.wav", "one")
    assert stats.as_dict() == {
        "no transcript in text": {"count": 1, "first_keys": ["u2"]},
        "no audio in wav.scp": {"count": 1, "first_keys": ["u3"]},
    }
    (tmp_path / "text").unlink()
    with pytest.raises(UserError, match="text: missing from the Kaldi data directory"):
        Manifest(tmp_path)


def test_bad_lines_are_entries_with_reasons(tmp_path):
    write_lines(
        tmp_path / "m.jsonl",
        [
            {"key": "ok", "audio": "a.wav", "text": "x"},
            "{not json",
            "[1, 2]",
            {"audio": "a.wav", "text": "x"},
            {"key": "noaudio", "text": "x"},
            {"key": "notext", "audio": "a.wav"},
            {"key": "baddur", "audio": "a.wav", "text": "x", "duration": "long"},
        ],
    )
    stats = SkipStats(max_examples=1)
    assert [u.key for u in read_manifest(tmp_path / "m.jsonl", stats)] == ["ok"]
    assert dict(stats.counts) == {
        "invalid JSON": 2,
        "missing field 'key'": 1,
        "missing field 'audio'": 1,
        "missing field 'text'": 1,
        "invalid duration/start/end": 1,
    }
    assert stats.examples["invalid JSON"] == ["m.jsonl:2"]
    assert stats.summary().startswith("6 skipped: 2 invalid JSON (m.jsonl:2, ...)")
    with pytest.raises(UserError, match="no such manifest"):
        Manifest(tmp_path / "none.jsonl")


def test_random_access_and_pickling(tmp_path):
    write_lines(
        tmp_path / "m.jsonl", [{"key": f"k{i}", "audio": "a", "text": "t"} for i in range(5)]
    )
    manifest = Manifest(tmp_path / "m.jsonl")
    assert len(manifest) == 5 and manifest[3].key == "k3"
    copy = pickle.loads(pickle.dumps(manifest))
    assert [copy[i].key for i in (4, 0)] == ["k4", "k0"]


def test_wrong_types_segments_and_spaces_are_named(tmp_path):
    write_lines(
        tmp_path / "m.jsonl",
        [
            {"key": "num", "audio": "a.wav", "text": 12345},
            {"key": 7, "audio": "a.wav", "text": "x"},
            {"key": "noaudio", "audio": "", "text": "x"},
            {"key": "neg", "wav": "a.wav", "txt": "x", "start": -1.0, "end": 2.0},
            {"key": "backwards", "wav": "a.wav", "txt": "x", "start": 3.0, "end": 2.0},
            '{"key": "nan", "wav": "a.wav", "txt": "x", "start": NaN, "end": 2.0}',
            '{"key": "inf", "wav": "a.wav", "txt": "x", "duration": Infinity}',
            {"key": "spaces", "audio": "a.wav", "text": "  two   words \t"},
        ],
    )
    entries = list(Manifest(tmp_path / "m.jsonl"))
    assert [(e.key, e.reason) for e in entries[:7]] == [
        ("num", "field 'text' is not a string"),
        ("m.jsonl:2", "field 'key' is not a string"),
        ("noaudio", "field 'audio' is empty"),
        ("neg", "invalid segment"),
        ("backwards", "invalid segment"),
        ("nan", "invalid duration/start/end"),
        ("inf", "invalid duration/start/end"),
    ]
    assert entries[7].text == "two words"


def test_kaldi_segments_outside_the_recording_and_spaces(tmp_path):
    (tmp_path / "wav.scp").write_text("rec a.wav\n")
    (tmp_path / "text").write_text("s1 hello   world\ns2 x\ns3 y\ns4 z\n")
    (tmp_path / "segments").write_text(
        "s1 rec 0.0 1.0\ns2 rec -0.5 1.0\ns3 rec 2.0 1.5\ns4 rec nan 1.0\n"
    )
    entries = list(Manifest(tmp_path))
    assert entries[0].text == "hello world"
    assert [(e.key, e.reason) for e in entries[1:]] == [
        ("s2", "invalid segment"),
        ("s3", "invalid segment"),
        ("s4", "invalid segment"),
    ]


def test_duplicated_keys_are_refused_by_name(tmp_path):
    lines = [{"key": k, "audio": "a.wav", "text": "x"} for k in ["a", "b", "a", "c", "b"]]
    write_lines(tmp_path / "m.jsonl", lines)
    with pytest.raises(UserError, match="m.jsonl: duplicated keys a, b;"):
        check_unique_keys(Manifest(tmp_path / "m.jsonl"))
    write_lines(tmp_path / "ok.jsonl", lines[:2])
    check_unique_keys(Manifest(tmp_path / "ok.jsonl"))
