"""Progress: a tqdm bar on a terminal, one plain line every so often in a log file.

tqdm redraws its bar with carriage returns; written to a file (a `make demo` log, a batch
job's stderr) every redraw stays there. When stderr is not a terminal, `progress` returns a
`PlainProgress` instead, with the part of tqdm's interface u2moe uses.
"""

import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

PLAIN_INTERVAL = 30.0  # seconds between plain progress lines


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    interval: float = PLAIN_INTERVAL,
):
    """tqdm(iterable, ...) on a terminal; otherwise a PlainProgress printing a line every
    `interval` seconds (and one at the end). Both iterate, `update`, `set_postfix`,
    `write` and `close`."""
    if sys.stderr.isatty():
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
            dynamic_ncols=True,
        )  # fmt: skip
    return PlainProgress(iterable, total, desc, unit, initial, disable, interval)


class PlainProgress:
    """`desc: n/total unit (p%), rate unit/s, postfix`, one line per `interval` seconds."""

    def __init__(self, iterable, total, desc, unit, initial, disable, interval):
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc, self.unit, self.disable, self.interval = desc, unit, disable, interval
        self.initial = self.n = self.printed_n = initial
        self.started = self.printed = time.monotonic()
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.printed >= self.interval:
            self._print()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def refresh(self) -> None:
        """Nothing to redraw: the next line shows the change."""

    @staticmethod
    def write(text: str, file=None) -> None:
        print(text, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.printed_n:
            self._print()
        self.closed = True

    def _print(self) -> None:
        self.printed, self.printed_n = time.monotonic(), self.n
        if self.disable:
            return
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.initial) / max(self.printed - self.started, 1e-9)
        parts = [f"{self.desc}: {done} {self.unit}{percent}", f"{rate:.3g} {self.unit}/s"]
        self.write(", ".join(parts + ([self.postfix] if self.postfix else [])))


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None
