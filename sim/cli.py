"""The ``python -m sim`` command line (also behind ``distribute sim``); see :mod:`sim.__main__`."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import textwrap
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .coverage import COVERAGE, EXIT_NOT_ENOUGH_COVERAGE
from .report import print_report, summary, write_timeline
from .runner import REMOTE_KINDS, RemoteUnavailable, RunOutcome, SimConfig, run
from .runner import Progress as OnProgress

COVERAGE_NOTE = textwrap.fill(
    "coverage: every run counts, from its journals, how often each fault and each interesting "
    f"event happened ({', '.join(i.name for i in COVERAGE)}), and prints them as a table (and "
    "under coverage in --json).  The minimums are stated in one table, COVERAGE in "
    "sim/coverage.py, for the default profile; they are scaled down for smaller runs and "
    "lower rates, and an item whose faults are switched off is not required.", width=88)

EPILOG = f"""\
exit status:
  0  every guarantee held and the run reached its coverage minimums
  1  the checker found a violation (the command that repeats the run is printed)
  2  bad usage
  {EXIT_NOT_ENOUGH_COVERAGE}  not enough coverage: every guarantee held, but the run saw fewer
     faults or events than sim/coverage.py asks of a run with its settings; the
     message names each count that fell short and by how much

{COVERAGE_NOTE}
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim",
        description="Simulate many Distribute workers against one remote, with faults, "
        "and check the protocol's guarantees (docs/protocol.md) on the history.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = SimConfig()
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    p.add_argument("--jobs", type=int, default=d.jobs, help="jobs queued in jobs.txt (job-0000..)")
    p.add_argument("--next-job-func", default="", metavar="MODULE:FUNCTION",
                   help="a next-job function instead of the jobs.txt queue")
    p.add_argument("--locked-claims", action="store_true",
                   help="ask the jobs.txt queue under the lock, as a function that is not "
                   "repo-only; by default it answers from the files with the lock free and "
                   "each claim hands jobs to idle workers")
    p.add_argument("--done-part-lines", type=int, default=d.done_part_lines, metavar="N",
                   help="seal done.txt into a part every N lines (default: the library's "
                   "1,000), so that a short run seals parts under faults")
    p.add_argument("--job-func", default="", metavar="MODULE:FUNCTION",
                   help="job function called as f(worker, job); default sleeps")
    p.add_argument("--job-seconds", type=float, default=d.job_seconds,
                   help="mean sleep of the default job (exponential)")
    p.add_argument("--job-fail-rate", type=float, default=d.job_fail_rate,
                   help="probability that the default job fails (fail_job)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random draw")
    p.add_argument("--duration", type=float, default=d.duration,
                   help="cap in seconds; the run stops by itself")
    p.add_argument("--remote", choices=REMOTE_KINDS, default=d.remote,
                   help="a bare repo by path (file), or served on 127.0.0.1 by git daemon "
                   "(daemon), by sshd with key authentication (ssh: needs openssh-server "
                   "and openssh-client), or by smart HTTP with basic authentication "
                   "(http: lighttpd and git http-backend); ssh and http use the servers "
                   "of the repository's tests/servers.py and stop them at the end")
    p.add_argument("--keep", action="store_true", help="keep the remote and local copies")
    p.add_argument("--lease", type=float, default=d.lease, help="lease period in seconds")
    p.add_argument("--poll", type=float, default=d.poll, help="first lock polling delay")
    p.add_argument("--max-attempts", type=int, default=d.max_attempts)
    p.add_argument("--kill-rate", type=float, default=d.kill_rate,
                   help="kill -9 per second (fleet); 0: none")
    p.add_argument("--pause-rate", type=float, default=d.pause_rate,
                   help="SIGSTOP per second (fleet); 0: none")
    p.add_argument("--push-fail-rate", type=float, default=d.push_fail_rate,
                   help="probability a push fails before sending")
    p.add_argument("--unknown-rate", type=float, default=d.unknown_rate,
                   help="probability a push's outcome is unknown")
    p.add_argument("--latency", type=float, default=0.0,
                   help="mean seconds added to each fetch and push")
    p.add_argument("--lie-rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--clock-skew", type=float, default=d.clock_skew, metavar="SECONDS",
                   help="each worker's wall clock is off by up to this much either way and "
                   "drifts up to 5%% (0: the real clock)")
    p.add_argument("--min-coverage", default=d.min_coverage, metavar="auto|off|NAME=N,...",
                   help="the coverage minimums: auto (sim/coverage.py, scaled to the run), "
                   "off (count, but require nothing), or NAME=N,... to require those counts "
                   "instead of the table's")
    p.add_argument("--max-faults", type=int, default=d.max_faults, metavar="N",
                   help="at most N kills and N pauses in the run (0: no cap), so that a "
                   "loaded machine, where restarts are slow, still finishes")
    p.add_argument("--no-faults", action="store_true",
                   help="shorthand for --kill-rate 0 --pause-rate 0 --push-fail-rate 0 "
                   "--unknown-rate 0")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--out", default="", metavar="DIR", help="write journals, SVG and summary here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    config = SimConfig(
        workers=args.workers, jobs=args.jobs, next_job_func=args.next_job_func,
        locked_claims=args.locked_claims, done_part_lines=args.done_part_lines,
        job_func=args.job_func, job_seconds=args.job_seconds, job_fail_rate=args.job_fail_rate,
        seed=seed, duration=args.duration, remote=args.remote, keep=args.keep, lease=args.lease,
        poll=args.poll, max_attempts=args.max_attempts, kill_rate=args.kill_rate,
        pause_rate=args.pause_rate, push_fail_rate=args.push_fail_rate,
        unknown_rate=args.unknown_rate, latency=args.latency, lie_rate=args.lie_rate,
        out=args.out, clock_skew=args.clock_skew, min_coverage=args.min_coverage,
        max_faults=args.max_faults,
    )
    if args.no_faults:
        config.kill_rate = config.pause_rate = config.push_fail_rate = config.unknown_rate = 0.0
    return config


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the simulator; return the exit status (0 ok, 1 violations, 2 usage or a remote
    that cannot be served, 3 not enough coverage, 130 interrupted).  Ctrl-C and SIGTERM
    stop the workers and any server the run started before returning."""
    args = parser().parse_args(argv)
    # SIGTERM as Ctrl-C, so that the run's clean-up (workers, servers) happens for both;
    # only the main thread may set handlers, and the previous one comes back at the end
    previous = None
    with contextlib.suppress(ValueError):
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("python -m sim: interrupted; workers and servers stopped", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        config.validate()
    except ValueError as exc:
        print(f"python -m sim: {exc}", file=sys.stderr)
        return 2
    err = Console(stderr=True)
    out = Console()
    show = not args.quiet
    if show:
        err.print(f"seed {config.seed}: {config.command()}", soft_wrap=True, highlight=False)
    if show:
        with Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=err, transient=True,
        ) as bar:
            task = bar.add_task("jobs done", total=len(config.queue) or None)

            def progress(done: int, total: int | None, counts: dict[str, int]) -> None:
                bar.update(task, completed=done, total=total,
                           description=f"jobs done ({counts.get('kills', 0)} kills, "
                           f"{counts.get('pauses', 0)} pauses)")

            outcome = _run(config, progress)
    else:
        outcome = _run(config)
    if outcome is None:
        return 2
    data = summary(outcome)
    if config.out:
        folder = Path(config.out)
        data["timeline"] = str(write_timeline(folder / "timeline.svg", outcome))
        (folder / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(data, indent=2))
    elif show:
        print_report(outcome, out)
    for note in outcome.notes:
        err.print(f"note: {note}", soft_wrap=True, highlight=False)
    if outcome.kept:
        err.print(f"kept the remote and local copies in {outcome.workdir}")
    if config.out and show:
        err.print(f"journals, timeline.svg and summary.json in {config.out}")
    if not outcome.ok:
        err.print(f"[red]{len(outcome.result.violations)} violation(s)[/red]; seed {config.seed}; "
                  f"reproduce with:\n  {config.command()}", soft_wrap=True, highlight=False)
        if args.quiet and not args.json:
            for v in outcome.result.violations[:20]:
                print(f"{v.rule}: {v.message}", file=sys.stderr)
        return 1
    if not outcome.coverage.ok:
        err.print(f"[red]{outcome.coverage.message()}[/red]; seed {config.seed}; reproduce "
                  f"with:\n  {config.command()}", soft_wrap=True, highlight=False)
        return EXIT_NOT_ENOUGH_COVERAGE
    return 0


def _run(config: SimConfig, progress: OnProgress | None = None) -> RunOutcome | None:
    """:func:`run`, or ``None`` (said on stderr) when the remote cannot be served."""
    try:
        return run(config, progress)
    except RemoteUnavailable as exc:
        print(f"python -m sim: cannot serve {exc}", file=sys.stderr)
        return None


__all__ = ["config_from_args", "main", "parser"]
