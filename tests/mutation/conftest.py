"""The terminal summary of a mutation run: which test caught each mutation."""

from __future__ import annotations

_VERDICTS: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _VERDICTS.extend(value for key, value in report.user_properties if key == "mutation")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _VERDICTS:
        terminalreporter.section("mutations")
        for line in sorted(_VERDICTS):
            terminalreporter.write_line(line)
