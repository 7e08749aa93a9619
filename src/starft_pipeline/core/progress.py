"""Progress of long loops: a tqdm bar on a terminal, periodic log lines everywhere else.

A run in a terminal shows tqdm's bar; a run whose stderr is a file or a pipe (CI, a scheduler, a log
collector) gets instead a log line every :data:`LOG_EVERY_S` seconds and one at the end: what is
running, done/total, items per second and the estimated time left. One implementation for every
stage (teacher pass, evaluation pass, fine-tuning epochs, the study's runs).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
#: Seconds between two log lines of a bar that is not shown (stderr not a terminal).
LOG_EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """``75`` → ``"1 min 15 s"``, ``4000`` → ``"1 h 06 min"``, ``9.4`` → ``"9 s"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(
    description: str,
    done: int,
    total: int,
    elapsed_s: float,
    unit: str,
    postfix: str = "",
    done_here: int | None = None,
) -> str:
    """``"teacher synthetic/train: 512/2800 images (18 %), 85.3 images/s, ETA 27 s"``; below one item a
    second the time per item (``"study grid: 2/6 runs (33 %), 5 min 10 s each, ETA 20 min 40 s"``).

    ``done_here`` is the part of ``done`` this run did in ``elapsed_s`` (default: all of it; less for a
    resumed run), which sets the rate; the ETA is shown once a rate is known.
    """
    rate = (done if done_here is None else done_here) / elapsed_s if elapsed_s > 0 else 0.0
    share = f" ({100 * done / total:.0f} %)" if total else ""
    speed = f"{rate:.1f} {unit}/s" if rate >= 1 or rate == 0 else f"{format_duration(1 / rate)} each"
    line = f"{description}: {done}/{total} {unit}{share}, {speed}"
    if rate > 0 and total > done:
        line += f", ETA {format_duration((total - done) / rate)}"
    return line + (f" [{postfix}]" if postfix else "")


class Progress:
    """A context manager counting work done: a tqdm bar when stderr is a terminal, else log lines.

    ``enabled=False`` shows and logs nothing (e.g. on torchrun ranks other than 0). ``initial`` is work
    done before (a resumed run); the rate counts only what this run does.
    """

    def __init__(
        self,
        total: int,
        description: str,
        enabled: bool = True,
        unit: str = "it",
        initial: int = 0,
        leave: bool = True,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self.total, self.description, self.unit = int(total), description, unit
        self.done, self._initial = int(initial), int(initial)
        self._bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit=unit,
            leave=leave,
            dynamic_ncols=True,
            disable=None if enabled else True,  # None: tqdm shows the bar only on a terminal
        )
        self._logs = enabled and bool(self._bar.disable)
        self._log_every_s = log_every_s
        self._start = self._last_log = time.monotonic()
        self._postfix = ""

    @property
    def disable(self) -> bool:
        """True when it neither shows a bar nor logs (``enabled=False``)."""
        return bool(self._bar.disable) and not self._logs

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        if self._logs and time.monotonic() - self._last_log >= self._log_every_s:
            self._log()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Figures shown after the bar (and at the end of the log lines), e.g. ``loss="0.1234"``."""
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())
        self._bar.set_postfix(refresh=refresh, **values)

    def _log(self) -> None:
        self._last_log = time.monotonic()
        done_here = self.done - self._initial
        elapsed = self._last_log - self._start
        logger.info(
            progress_line(self.description, self.done, self.total, elapsed, self.unit, self._postfix, done_here)
        )

    def close(self) -> None:
        if self._logs and self.done > self._initial:
            self._log()
        self._logs = False
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
