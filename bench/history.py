"""Growth table: what a long sweep's history costs a worker, as ratios to an empty remote.

A remote with N jobs done is made synthetically, in one `git fast-import` stream (a
real sweep of 10,000 jobs would take hours to make the same state):

* ``done.txt`` on the main branch lists N finished jobs, in the format and layout the
  version measured writes (its older lines in sealed parts ``done/000001.txt``, ...);
* each of those jobs has a folder ``updates/<job>/`` with a small ``log.txt`` (as
  every job run by ``distribute work`` has), unless ``--no-logs``;
* each has its job branch ``refs/heads/jobs/w/<job>/<token>`` (as an older version
  left them; workers now delete the branches of the jobs they finish);
* with ``--big K MB``, K of them also wrote a ``model.bin`` of MB megabytes of
  random bytes (large results, which a partial clone leaves on the remote);
* ``jobs.txt`` queues the jobs the measurement runs; the history is then packed
  (``git gc``), as a remote's housekeeping would.

For each history size, in the same run, interleaved so a shared machine's drift hits
every size alike, it measures:

* one worker's milliseconds per job (``get_next_job`` + ``finish_job``, the local copy
  already made), and the ratio to the empty remote; a job writes nothing, or, with
  ``--job-log``, a ``log.txt`` in its folder, as every real job does (its finish then
  commits it, and the commit is grafted onto the tree of every job's results);
* a fresh worker's start: clone, open and its first job, from the remote's path
  (a local clone, which links the objects) and from its ``file://`` URL (the pack
  protocol, as a worker on another machine clones it);
* ``distribute status`` (a separate process, as a person runs it);
* with ``--fleet N``, N worker processes at once on the same remote (each warmed up
  by two jobs, as a long-running worker is): the fleet's wall milliseconds per job,
  where finishes meet each other's results in the tree of every job's results;
* the refs on the remote and its size on disk.

With ``--gc`` each history's job branches are first deleted with ``distribute gc``
(timed): what a remote written by this version holds, since workers delete the branches
of the jobs they finish.

Usage:
    python bench/history.py                        # sizes 0, 1000 and 10000
    python bench/history.py --gc                   # the same without the done jobs' branches
    python bench/history.py --sizes 0 10000 100000 --jobs 20
    python bench/history.py --no-logs              # ledgers and refs only
    python bench/history.py --sizes 0 10000 --big 100 5   # and 500 MB of results
    python bench/history.py --ssh                  # a new worker's start over ssh too
    python bench/history.py --job-log              # each measured job writes a log.txt
    python bench/history.py --fleet 2 --job-log    # and two workers at once
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distribute.core.ledger import DONE, DONE_PARTS, Entry, Ledger
from distribute.core.names import encode_component, job_branch_ref
from distribute.dist import worker_from_url
from distribute.sources import QueueJobs

BRANCH = "main"


def git(*args: str, inp: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], input=inp, capture_output=True, check=True)
    return done.stdout.decode().strip()


def make_history(remote: Path, done: int, queued: int, logs: bool,
                 big: tuple[int, float] = (0, 0.0)) -> None:
    """A prepared remote whose main branch records ``done`` finished jobs (see above);
    ``big``: how many of them also wrote a ``model.bin`` of random bytes, and its MB."""
    subprocess.run([sys.executable, "-m", "distribute", "init", str(remote), "--no-check"],
                   check=True, capture_output=True)
    base = git("--git-dir", str(remote), "rev-parse", BRANCH)
    names = [f"done-{i:06d}" for i in range(done)]
    # done.txt as the version measured writes it: with its sealed parts, where it has them
    files = Ledger(done=tuple(Entry(job=j, worker="w", token=i + 1)
                              for i, j in enumerate(names))).to_files()
    ledger = files.pop(DONE) or b""
    sealed = {path: data for path, data in files.items()
              if path.startswith(DONE_PARTS + "/") and data is not None}
    queue = "".join(f"job-{i:05d}\n" for i in range(queued)).encode()
    parts: list[bytes] = []

    def blob(mark: int, data: bytes) -> None:
        parts.append(f"blob\nmark :{mark}\ndata {len(data)}\n".encode() + data + b"\n")

    blob(1, b"one line of a job's log\n")
    blob(2, ledger)
    blob(3, queue)
    for number, data in enumerate(sealed.values(), 10**7):
        blob(number, data)
    message = b"a synthetic history"
    parts.append(
        f"commit refs/heads/{BRANCH}\ncommitter bench <bench@invalid> {int(time.time())} +0000\n"
        f"data {len(message)}\n".encode() + message + f"\nfrom {base}\n".encode()
    )
    parts.append(b"M 100644 :2 done.txt\nM 100644 :3 jobs.txt\n")
    parts += [f"M 100644 :{number} {path}\n".encode()
              for number, path in enumerate(sealed, 10**7)]
    if logs:
        parts += [f"M 100644 :1 updates/{encode_component(j)}/log.txt\n".encode() for j in names]
    count, mb = big
    for i, j in enumerate(names[:count]):
        data = random.Random(i).randbytes(int(mb * 1e6))
        parts.insert(0, f"blob\nmark :{100 + i}\ndata {len(data)}\n".encode() + data + b"\n")
        parts.append(f"M 100644 :{100 + i} updates/{encode_component(j)}/model.bin\n".encode())
    parts.append(b"\n")
    parts += [f"reset {job_branch_ref('w', j, i + 1)}\nfrom refs/heads/{BRANCH}\n\n".encode()
              for i, j in enumerate(names)]
    git("--git-dir", str(remote), "fast-import", "--quiet", inp=b"".join(parts))
    git("--git-dir", str(remote), "gc", "--quiet")


def per_job_ms(remote: Path, copy: Path, jobs: int, log: bool = False) -> float:
    with worker_from_url(str(remote), path=copy, name="bench", branch=BRANCH) as worker:
        source = QueueJobs()
        start = time.perf_counter()
        for _ in range(jobs):
            if worker.get_next_job(source) is None:
                raise SystemExit(f"{remote}: the queue ran dry; raise --queue")
            if log:
                os.makedirs(worker.job_dir, exist_ok=True)
                with open(os.path.join(worker.job_dir, "log.txt"), "w") as out:
                    out.write(f"what {worker.running_job} printed\n")
            worker.finish_job()
        return (time.perf_counter() - start) / jobs * 1000


def _fleet_member(remote: str, copy: str, name: str, jobs: int, log: bool,
                  ready: Any, out: Any) -> None:
    """One worker of :func:`fleet_ms`: two jobs to warm up (a new process parses the
    sealed parts of done.txt once), then ``jobs`` timed from when every member is ready."""
    with worker_from_url(remote, path=copy, name=name, branch=BRANCH) as worker:
        source = QueueJobs()
        for number in range(jobs + 2):
            if number == 2:
                ready.wait()
            if worker.get_next_job(source) is None:
                out.put(("dry", time.time()))
                return
            if log:
                os.makedirs(worker.job_dir, exist_ok=True)
                with open(os.path.join(worker.job_dir, "log.txt"), "w") as file:
                    file.write(f"what {worker.running_job} printed\n")
            worker.finish_job()
    out.put(("done", time.time()))


def fleet_ms(remote: Path, work: Path, workers: int, jobs: int, log: bool) -> float:
    """``workers`` worker processes at once, ``jobs`` each: wall milliseconds per job of
    the whole fleet, from when all are warm to when the last one ends."""
    context = mp.get_context("spawn")
    ready, out = context.Barrier(workers + 1), context.Queue()
    procs = [context.Process(target=_fleet_member, args=(
        str(remote), str(work / f"fleet-{i}"), f"fleet-{i}", jobs, log, ready, out))
        for i in range(workers)]
    for proc in procs:
        proc.start()
    ready.wait(timeout=600)
    start = time.time()
    ends = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    if any(kind == "dry" for kind, _ in ends):
        raise SystemExit(f"{remote}: the queue ran dry during the fleet's run")
    return (max(end for _, end in ends) - start) / (workers * jobs) * 1000


def fresh_start_s(remote: Path | str, copy: Path) -> float:
    start = time.perf_counter()
    with worker_from_url(str(remote), path=copy, name="fresh", branch=BRANCH) as worker:
        worker.get_next_job(QueueJobs())
        worker.finish_job()
    return time.perf_counter() - start


def status_s(remote: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distribute", "status", str(remote)],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10000],
                    help="jobs done in each synthetic history")
    ap.add_argument("--jobs", type=int, default=10, help="no-op jobs per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per size")
    ap.add_argument("--no-logs", dest="logs", action="store_false",
                    help="no updates/<job>/log.txt in the history")
    ap.add_argument("--big", type=float, nargs=2, default=(0, 0), metavar=("K", "MB"),
                    help="K of the done jobs also wrote a model.bin of MB random megabytes")
    ap.add_argument("--ssh", action="store_true",
                    help="also time a new worker's start over ssh (the test suite's sshd on "
                         "127.0.0.1, tests/servers.py)")
    ap.add_argument("--job-log", action="store_true",
                    help="each measured job writes updates/<job>/log.txt (default: no-op jobs)")
    ap.add_argument("--gc", action="store_true",
                    help="delete the done jobs' branches (distribute gc, timed) first")
    ap.add_argument("--fleet", type=int, default=0, metavar="N",
                    help="also run N worker processes at once, --jobs each after two to "
                         "warm up, and print the fleet's wall ms per job")
    args = ap.parse_args()
    sizes = sorted(set(args.sizes))
    work = Path(tempfile.mkdtemp(prefix="distribute-history-"))
    stack = contextlib.ExitStack()
    try:
        via: dict[str, Callable[[Path], str]] = {"file://": lambda path: path.as_uri()}
        if args.ssh:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            import servers

            sshd = stack.enter_context(servers.SshServer(work / "sshd", lifetime=3600))
            os.environ["GIT_SSH_COMMAND"] = sshd.ssh_command  # for the workers' git
            via["ssh"] = sshd.url
        remotes = {}
        for n in sizes:
            print(f"making a history of {n} done jobs ...", file=sys.stderr, flush=True)
            remotes[n] = work / f"remote-{n}.git"
            queued = args.jobs * (args.rounds + 2) + 10
            queued += args.rounds * args.fleet * (args.jobs + 2)
            make_history(remotes[n], n, queued=queued,
                         logs=args.logs, big=(min(n, int(args.big[0])), args.big[1]))
            if args.gc:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "distribute", "gc", str(remotes[n])],
                               check=True, capture_output=True)
                print(f"distribute gc of {n} done jobs' branches: "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        refs = {n: len(git("--git-dir", str(r), "for-each-ref").splitlines())
                for n, r in remotes.items()}
        size = {n: disk_mb(r) for n, r in remotes.items()}
        ms: dict[int, list[float]] = {n: [] for n in sizes}
        starts: dict[int, list[float]] = {n: [] for n in sizes}
        urls: dict[tuple[str, int], list[float]] = {(k, n): [] for k in via for n in sizes}
        status: dict[int, list[float]] = {n: [] for n in sizes}
        fleet: dict[int, list[float]] = {n: [] for n in sizes}
        for k in range(args.rounds):
            for n in sizes:
                print(f"round {k + 1}/{args.rounds}: {n} done", file=sys.stderr, flush=True)
                ms[n].append(per_job_ms(remotes[n], work / f"copy-{n}", args.jobs, args.job_log))
                fresh = work / f"fresh-{n}-{k}"
                starts[n].append(fresh_start_s(remotes[n], fresh))
                shutil.rmtree(fresh, ignore_errors=True)
                for kind, url in via.items():
                    urls[kind, n].append(fresh_start_s(url(remotes[n]), fresh))
                    shutil.rmtree(fresh, ignore_errors=True)
                status[n].append(status_s(remotes[n]))
                if args.fleet:
                    fleet[n].append(fleet_ms(remotes[n], work / f"fleet-{n}", args.fleet,
                                             args.jobs, args.job_log))
        base = sizes[0]
        med = {n: statistics.median(ms[n]) for n in sizes}
        st = {n: statistics.median(starts[n]) for n in sizes}
        ss = {n: statistics.median(status[n]) for n in sizes}
        su = {key: statistics.median(found) for key, found in urls.items()}
        logs = ("with" if args.logs else "without") + " a log.txt per done job"
        logs += ", their branches deleted by distribute gc" if args.gc else ""
        logs += "; each measured job writes a log.txt" if args.job_log else ""
        if args.big[0]:
            logs += f", {int(args.big[0])} of them with a {args.big[1]:g} MB model.bin"
        print(f"\nhistory growth ({logs}; medians of {args.rounds} "
              f"rounds of {args.jobs} jobs; ratios to {base} done)")
        heads = "".join(f" {kind + ' s':>9} {'ratio':>6}" for kind in via)
        print(f"{'done':>8} {'ms/job':>8} {'ratio':>6} {'start s':>8} {'ratio':>6}{heads} "
              f"{'status s':>9} {'ratio':>6} {'refs':>7} {'MB':>7}")
        for n in sizes:
            cells = "".join(f" {su[k, n]:>9.2f} {su[k, n] / su[k, base]:>6.2f}" for k in via)
            print(f"{n:>8} {med[n]:>8.0f} {med[n] / med[base]:>6.2f} {st[n]:>8.2f} "
                  f"{st[n] / st[base]:>6.2f}{cells} "
                  f"{ss[n]:>9.2f} {ss[n] / ss[base]:>6.2f} {refs[n]:>7} {size[n]:>7.1f}")
        if args.fleet:
            fm = {n: statistics.median(fleet[n]) for n in sizes}
            print(f"\n{args.fleet} workers at once ({args.jobs} jobs each, after two to warm "
                  "up): wall ms per job of the fleet")
            for n in sizes:
                print(f"{n:>8} {fm[n]:>8.0f} {fm[n] / fm[base]:>6.2f}")
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
