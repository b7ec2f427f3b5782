"""Progress reports: plain lines in a log, one redrawn line on a terminal."""

import io
import logging

from maml_dist import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_tenth_and_the_last(caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")
    p = progress.Progress("meta-test K=10", 600, "tasks", interval=1e9, stream=io.StringIO())
    for _ in range(60):
        p.update(10)
    p.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("meta-test")]
    assert len(lines) == 10  # one per tenth; the last is 600/600
    assert lines[0].startswith("meta-test K=10: 60/600 tasks, ") and "ETA" in lines[0]
    assert lines[-1].startswith("meta-test K=10: 600/600 tasks, ") and "ETA" not in lines[-1]


def test_a_terminal_gets_one_live_line_and_no_log_lines(caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")
    stream = _Terminal()
    p = progress.Progress("decoding images", 3, "images", stream=stream)
    for _ in range(3):
        p.update()
    p.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "decoding images: 3/3 images" in text
    assert not [r for r in caplog.records if "decoding" in r.getMessage()]


def test_only_process_zero_reports(caplog):
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="absl")
    p = progress.Progress("x", 2, "tasks", enabled=False, stream=io.StringIO())
    p.update(2)
    assert not caplog.records


def test_durations_read_as_clock_times():
    assert progress.duration(34) == "0:34"
    assert progress.duration(3725) == "1:02:05"
