"""Progress off a terminal: periodic log lines with done/total, rate and ETA; nothing when disabled."""

from __future__ import annotations

import logging

import pytest

from starft_pipeline.core import progress
from starft_pipeline.core.progress import Progress, format_duration, progress_line


def test_the_line_says_what_how_far_how_fast_and_how_long() -> None:
    line = progress_line("teacher synthetic/train", 500, 2000, 10.0, "images")
    assert line == "teacher synthetic/train: 500/2000 images (25 %), 50.0 images/s, ETA 30 s"
    resumed = progress_line("star", 3, 5, 60.0, "epochs", postfix="loss=0.1000", done_here=1)
    assert resumed == "star: 3/5 epochs (60 %), 1 min 00 s each, ETA 2 min 00 s [loss=0.1000]"  # 1 epoch in 60 s here


@pytest.mark.parametrize(("seconds", "text"), [(9.4, "9 s"), (75, "1 min 15 s"), (4000, "1 h 06 min"), (-3, "0 s")])
def test_durations_read_as_a_person_says_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_off_a_terminal_it_logs_periodically_and_at_the_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter(float(t) for t in range(0, 1000, 10))  # each call: 10 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    logs = caplog.at_level(logging.INFO, logger=progress.__name__)
    with logs, Progress(4, "evaluation synthetic/test", unit="batches", log_every_s=25) as bar:  # pytest: no tty
        for _ in range(4):
            bar.update()
    lines = [record.getMessage() for record in caplog.records]
    # start at t=0; updates at 10, 20, 30 (≥ 25 s: logged, read at 40: 3 in 40 s, 1 left → 13 s), 50; the end at 60
    assert lines[0] == "evaluation synthetic/test: 3/4 batches (75 %), 13 s each, ETA 13 s"
    assert lines[-1].startswith("evaluation synthetic/test: 4/4 batches (100 %)") and len(lines) == 2


def test_disabled_it_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger=progress.__name__),
        Progress(3, "rank 1", enabled=False, log_every_s=0) as bar,
    ):
        bar.update(3)
    assert caplog.records == []
