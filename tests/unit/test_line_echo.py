"""`distribute work` shows each job's output line by line after the job's name."""

from __future__ import annotations

from distribute.runner import LineEcho


def collect():
    seen: list[tuple[str, str]] = []
    return seen, LineEcho("job a", lambda job, line: seen.append((job, line)))


def test_lines_split_across_chunks_are_shown_whole_and_the_last_at_the_end():
    seen, echo = collect()
    echo.feed(b"epoch 1 lo")
    echo.feed(b"ss=0.5\nepoch 2 loss=0.4\r\nno newline")
    assert seen == [("job a", "epoch 1 loss=0.5"), ("job a", "epoch 2 loss=0.4")]
    echo.close()
    assert seen[-1] == ("job a", "no newline") and len(seen) == 3


def test_a_progress_bar_is_shown_once_as_it_ends():
    seen, echo = collect()
    for pct in range(0, 101, 10):
        echo.feed(f"\r{pct:3d}%".encode())
    echo.feed(b"\n")
    assert seen == [("job a", "100%")]


def test_undecodable_bytes_and_a_failing_terminal_do_not_stop_the_job():
    seen, echo = collect()
    echo.feed(b"\xff\xfeok\n")
    assert seen == [("job a", "\ufffd\ufffdok")]
    broken = LineEcho("j", lambda job, line: 1 / 0)
    broken.feed(b"x\n")  # no exception
    broken.close()


def test_an_endless_line_keeps_only_its_tail():
    seen, echo = collect()
    echo.feed(b"x" * 200_000)
    echo.close()
    assert len(seen) == 1 and len(seen[0][1]) == 65536
