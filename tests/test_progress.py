"""Progress output: plain lines without carriage returns when stderr is not a terminal."""

import sys

from tqdm import tqdm

from u2moe.progress import PlainProgress, progress


def test_plain_lines_in_a_log_file(capsys):
    items = list(progress(range(5), desc="prepare train", unit="utt", interval=0))
    assert items == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("prepare train: 5/5 utt (100%), ")


def test_plain_progress_prints_every_interval_and_at_the_end(capsys):
    bar = progress(total=None, initial=10, desc="train", unit="step", interval=3600)
    assert isinstance(bar, PlainProgress)
    for _ in range(100):
        bar.update()
    bar.write("a log line")
    bar.set_postfix(loss="1.23")
    bar.total = 220
    bar.refresh()
    bar.close()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "a log line" and len(lines) == 2
    assert lines[1].startswith("train: 110/220 step (50%), ")
    assert lines[1].endswith(" step/s, loss=1.23")


def test_a_terminal_gets_tqdm(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(total=3, desc="x", disable=True)
    assert isinstance(bar, tqdm)
    bar.close()
