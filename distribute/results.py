"""Results: what every job wrote, gathered from the remote into one table.

Theory of operation
-------------------
A job writes its numbers to a file in its job folder (``metrics.json`` by
default); ``finish_job`` merges that folder into the main branch, so the main
branch holds the results of every done job, and each running or failed job's
own branch holds what its last update pushed.  :func:`collect` clones the
remote's main branch once (a :class:`~distribute.remote.RemoteView`), fetches
the branches of the running and failed jobs the ledgers name in one more
fetch, and reads every job's file with a single ``git cat-file --batch``
process, so the cost does not grow by a git process per job.

One row per job: ``job`` (the name as queued), its parameters
(:func:`~distribute.sweeps.parse_job`) as columns (``param.<name>`` for a
parameter named like one of the fixed columns), ``state`` (``done``,
``running``, ``released``: waiting for another attempt, or ``failed``),
``attempt``, ``worker``, then the metrics.  The file is read as

- a JSON object; nested objects become dotted columns (``val.loss``);
- else JSON lines: the last line that holds a JSON object (a line still being
  written is skipped);
- CSV with a header when its name ends in ``.csv`` (``.tsv``: tab-separated):
  the last row.

A metric whose name is already a column (``job``, a parameter, ...) is
prefixed with the file's stem (``metrics.seed``).  A file that cannot be read
leaves its reason in an ``error`` column instead of stopping the collection.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distribute.core.errors import TransportError, UsageError
from distribute.core.names import job_branch_ref, job_dir
from distribute.sweeps import parse_job

if TYPE_CHECKING:
    from distribute.core.ledger import Entry
    from distribute.remote import RemoteView

DEFAULT_FILE = "metrics.json"
#: Columns every row has, besides the parameters.
JOB, STATE, ATTEMPT, WORKER, ERROR = "job", "state", "attempt", "worker", "error"
PLOT_EXTRA = "pip install 'distribute-jobs[plot]'"

Row = dict[str, Any]


# ---- reading the remote ----------------------------------------------------------------------
def collect(
    url: str, file: str = DEFAULT_FILE, *, branch: str | None = None, live: bool = True
) -> list[Row]:
    """One row per done, running and failed job of the remote at ``url`` (see the module
    docstring).

    Args:
        url: a bare repository's folder or a git URL.
        file: the file each job wrote in its job folder.
        branch: the main branch (default: the remote's default branch).
        live: read running and failed jobs' files from their own branches (their
            last update); ``False`` reads only the main branch.

    Raises:
        RemoteStateError: the remote is not prepared.
        UsageError: ``file`` is not a relative path.
    """
    from distribute.remote import is_local_path, remote_view

    check_file(file)
    if is_local_path(url):
        url = str(Path(url).expanduser().resolve())
    with remote_view(url, branch) as view:
        return collect_from_view(view, file, live=live)


def check_file(file: str) -> str:
    """``file`` if it can name a file inside a job folder.

    Raises:
        UsageError: empty, absolute, with a ``.``, ``..`` or ``.git`` component, or a
            NUL or newline.
    """
    parts = file.split("/")
    if (
        not file or "\0" in file or "\n" in file
        or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts)
    ):
        raise UsageError(f"file {file!r} is not a relative path inside a job folder")
    return file


def collect_from_view(
    view: RemoteView, file: str = DEFAULT_FILE, *, live: bool = True
) -> list[Row]:
    """:func:`collect` on a remote view that is already open."""
    check_file(file)
    main = view.main()
    ledger = view.ledger(main)
    entries: list[tuple[Entry, str]] = [(e, "done") for e in ledger.done]
    entries += [(e, "released" if e.released else "running") for e in ledger.running]
    entries += [(e, "failed") for e in ledger.failed]
    refs = {e.job: _branch_ref(e) for e, state in entries if state != "done"}
    tips: dict[str, str] = {}
    wanted = sorted({r for r in refs.values() if r is not None})
    if live and wanted:
        try:
            tips = view.transport.fetch(wanted)
            if set(wanted) - set(tips):  # archived (by their worker or gc), perhaps
                from distribute.coordination import read_archive

                archived = read_archive(view.transport, [r for r in wanted if r not in tips])
                tips.update({ref: archived[ref] for ref in wanted
                             if ref not in tips and ref in archived})
        except TransportError:
            tips = {}  # the branches are a bonus; the main branch was read
    sources: list[str] = []
    for entry, state in entries:
        ref = refs.get(entry.job)
        commit = tips.get(ref, main) if state != "done" and ref is not None else main
        sources.append(f"{commit}:{job_dir(entry.job)}/{file}")
    blobs = read_blobs(view, sources)
    stem = file.rsplit("/", 1)[-1].split(".", 1)[0] or "file"
    rows = []
    for (entry, state), data in zip(entries, blobs, strict=True):
        row: Row = {JOB: entry.job}
        row.update({_param_column(k): v for k, v in parse_job(entry.job).items()})
        row.update({STATE: state, ATTEMPT: entry.attempt, WORKER: entry.worker or entry.was})
        if data is not None:
            try:
                metrics = read_metrics(data, file)
            except ValueError as exc:
                row[ERROR] = f"{file}: {exc}"
            else:
                for key, value in metrics.items():
                    row[f"{stem}.{key}" if key in row else key] = value
        rows.append(row)
    return rows


_RESERVED = frozenset({JOB, STATE, ATTEMPT, WORKER, ERROR})


def _param_column(key: str) -> str:
    """A parameter's column: its name, or ``param.<name>`` for a name a fixed column has."""
    return f"param.{key}" if key in _RESERVED else key


def _branch_ref(entry: Entry) -> str | None:
    worker = entry.worker or entry.was
    return job_branch_ref(worker, entry.job, entry.token) if worker else None


def read_blobs(view: RemoteView, names: Sequence[str]) -> list[bytes | None]:
    """The blobs named ``<commit>:<path>`` from the view's object store, in one
    ``git cat-file --batch`` (``None``: no such file)."""
    if not names:
        return []
    if any("\n" in n for n in names):
        raise UsageError("a file name cannot hold a newline")
    try:
        done = subprocess.run(
            ["git", "-C", str(view.copy.path), "cat-file", "--batch"],
            input="".join(n + "\n" for n in names).encode("utf-8"),
            capture_output=True, timeout=600, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        # the transport reads them one at a time
        found: list[bytes | None] = []
        for name in names:
            commit, _, path = name.partition(":")
            found.append(view.transport.read_file(commit, path))
        return found
    return parse_batch(done.stdout, len(names))


def parse_batch(out: bytes, count: int) -> list[bytes | None]:
    """Split ``git cat-file --batch`` output for ``count`` requests (blobs only)."""
    found: list[bytes | None] = []
    at = 0
    for _ in range(count):
        end = out.index(b"\n", at)
        header = out[at:end].decode("utf-8", "replace")
        at = end + 1
        parts = header.split(" ")
        if len(parts) != 3 or not parts[2].isdigit():  # "<name> missing", "... ambiguous"
            found.append(None)
            continue
        size = int(parts[2])
        found.append(out[at:at + size] if parts[1] == "blob" else None)
        at += size + 1
    return found


# ---- reading one file ------------------------------------------------------------------------
def read_metrics(data: bytes, file: str = DEFAULT_FILE) -> dict[str, Any]:
    """The metrics in one job's file (see the module docstring for the formats).

    Raises:
        ValueError: the file holds none, saying why.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    lower = file.lower()
    if lower.endswith((".csv", ".tsv")):
        return _last_csv_row(text, "\t" if lower.endswith(".tsv") else ",")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, dict):
            return flatten(whole)
    for line in reversed(text.splitlines()):
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            return flatten(item)
    if whole is not None:
        raise ValueError(f"holds a JSON {type(whole).__name__}, not an object")
    raise ValueError("holds no JSON object (neither one document nor JSON lines)")


def _last_csv_row(text: str, delimiter: str) -> dict[str, Any]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    last: dict[str, Any] | None = None
    for record in reader:
        if any(v not in (None, "") for v in record.values()):
            last = record
    if reader.fieldnames is None:
        raise ValueError("is empty")
    if last is None:
        raise ValueError("has a header but no rows")
    return {k: _scalar(v) for k, v in last.items() if k is not None}


def _scalar(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys; lists as their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


# ---- shaping the table -----------------------------------------------------------------------
def columns(rows: Iterable[Row]) -> list[str]:
    """Column order: job, parameters, state, attempt, worker, metrics (first seen first),
    error."""
    rows = list(rows)
    params: dict[str, None] = {}
    rest: dict[str, None] = {}
    for row in rows:
        keys = {_param_column(k) for k in parse_job(str(row.get(JOB, "")))}
        for key in row:
            if key in keys:
                params.setdefault(key, None)
            elif key not in _RESERVED:
                rest.setdefault(key, None)
    rest = {k: None for k in rest if k not in params}
    has_error = any(ERROR in row for row in rows)
    return [JOB, *params, STATE, ATTEMPT, WORKER, *rest, *([ERROR] if has_error else [])]


def number(value: Any) -> float | None:
    """``value`` as a number when it is one or reads as one (not ``True``/``False``)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _known(rows: Sequence[Row], column: str, what: str) -> None:
    names = columns(rows)
    if rows and column not in names:
        raise UsageError(f"{what}: no column {column!r}; the columns are: {', '.join(names)}")


def sort_rows(rows: Sequence[Row], key: str) -> list[Row]:
    """Rows sorted by column ``key`` (``-key``: descending).

    Numbers when every value present reads as one, else text; rows without the
    value come last either way.

    Raises:
        UsageError: no such column.
    """
    descending = key.startswith("-")
    column = key[1:] if descending else key
    _known(rows, column, "--sort")
    present = [r for r in rows if r.get(column) not in (None, "")]
    missing = [r for r in rows if r.get(column) in (None, "")]
    if all(number(r[column]) is not None for r in present):
        present.sort(key=lambda r: number(r[column]) or 0.0, reverse=descending)
    else:
        present.sort(key=lambda r: str(r[column]), reverse=descending)
    return present + missing


_CONDITION = re.compile(r"^(.+?)(<=|>=|!=|==|=|<|>)(.*)$", re.DOTALL)


def filter_rows(rows: Sequence[Row], where: Iterable[str]) -> list[Row]:
    """The rows meeting every condition: ``col=value``, ``col!=value``, ``col<value``,
    ``col>value``, ``col<=value``, ``col>=value``.

    Numbers are compared as numbers when both sides read as one, else as text.
    A row without the column never matches.

    Raises:
        UsageError: a malformed condition or an unknown column.
    """
    conditions = []
    for expr in where:
        match = _CONDITION.match(expr.strip())
        if match is None:
            raise UsageError(
                f"--where {expr!r}: write COLUMN=VALUE, COLUMN<VALUE or COLUMN>VALUE "
                "(also !=, <=, >=)"
            )
        column, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
        _known(rows, column, f"--where {expr!r}")
        conditions.append((column, "=" if op == "==" else op, value))
    return [r for r in rows if all(_holds(r.get(c), op, v) for c, op, v in conditions)]


def _holds(have: Any, op: str, want: str) -> bool:
    if have is None:
        return False
    a: Any
    b: Any
    a, b = number(have), number(want)
    if a is None or b is None:
        a, b = str(have), want
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == ">":
        return bool(a > b)
    if op == "<=":
        return bool(a <= b)
    return bool(a >= b)


# ---- output ----------------------------------------------------------------------------------
def cell(value: Any) -> str:
    """A value as the table shows it: floats with six significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def format_csv(rows: Sequence[Row]) -> str:
    """The rows as CSV with a header, values as collected."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(rows), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def format_json(rows: Sequence[Row]) -> str:
    """The rows as a JSON list of objects, keys in column order."""
    names = columns(rows)
    ordered = [{k: row[k] for k in names if k in row} for row in rows]
    return json.dumps(ordered, indent=2, ensure_ascii=False)


def to_dataframe(rows: Sequence[Row]) -> Any:
    """The rows as a pandas ``DataFrame`` in column order; columns whose values all read
    as numbers (parameters included) become numeric.

    Raises:
        ImportError: pandas is not installed, saying how to install it.
    """
    try:
        pandas = importlib.import_module("pandas")
    except ImportError:
        raise ImportError(
            "distribute.results.to_dataframe needs pandas, which is not installed: "
            "pip install pandas"
        ) from None
    names = columns(rows)
    frame = pandas.DataFrame([{k: row.get(k) for k in names} for row in rows], columns=names)
    for name in names:
        values = [v for v in frame[name] if v is not None and v == v]
        if values and all(number(v) is not None for v in values):
            frame[name] = pandas.to_numeric(frame[name])
    return frame


# ---- plots -----------------------------------------------------------------------------------
def _figure_class() -> Any:
    try:
        return importlib.import_module("matplotlib.figure").Figure
    except ImportError:
        raise UsageError(
            f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA} "
            "(or pip install matplotlib)"
        ) from None


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "plot"


def default_plot_path(metric: str, by: str) -> Path:
    return Path(f"{_file_part(metric)}-by-{_file_part(by)}.png")


def plot(rows: Sequence[Row], metric: str, by: str | None = None,
         out: str | Path | None = None) -> Path:
    """Write a PNG of ``metric`` against the column ``by`` and return its path.

    Every job with a numeric ``metric`` is a dot (hollow when it is not done);
    the line is the mean of the done jobs at each value of ``by`` (over seeds,
    say).  ``by`` defaults to the first parameter whose values differ; numbers
    go on a numeric axis (a log axis when they are positive and the largest is
    at least 20 times the smallest), anything else on a categorical one.

    Raises:
        UsageError: matplotlib is missing, an unknown column, or no job has a
            numeric ``metric``.
    """
    figure = _figure_class()
    _known(rows, metric, "--plot")
    points = [(r, y) for r in rows if (y := number(r.get(metric))) is not None]
    if not points:
        raise UsageError(f"no job has a numeric {metric!r} to plot")
    if by is None:
        params = {_param_column(k) for k in parse_job(str(points[0][0][JOB]))}
        varied = [c for c in columns(rows)[1:] if c in params]
        by = next(
            (c for c in varied if len({str(r.get(c)) for r, _ in points}) > 1), JOB
        )
    else:
        _known(rows, by, "--by")
    path = Path(out) if out is not None else default_plot_path(metric, by)
    raw = [r.get(by) for r, _ in points]
    as_numbers = [number(x) for x in raw]
    fig = figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    xs: list[float]
    if all(x is not None for x in as_numbers):
        xs = [float(x) for x in as_numbers if x is not None]
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
    else:
        labels = list(dict.fromkeys(cell(x) for x in raw))
        xs = [float(labels.index(cell(x))) for x in raw]
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0,
                      ha="right" if len(labels) > 4 else "center")
    done = [(x, y) for x, (r, y) in zip(xs, points, strict=True) if r.get(STATE) == "done"]
    other = [(x, y) for x, (r, y) in zip(xs, points, strict=True) if r.get(STATE) != "done"]
    if done:
        ax.scatter([x for x, _ in done], [y for _, y in done], s=22, alpha=0.6,
                   color="tab:blue", label=f"done jobs ({len(done)})", zorder=3)
        groups: dict[float, list[float]] = {}
        for x, y in done:
            groups.setdefault(x, []).append(y)
        keys = sorted(groups)
        ax.plot(keys, [sum(groups[k]) / len(groups[k]) for k in keys], "-o", markersize=4,
                color="tab:blue", linewidth=1.5, label="mean", zorder=2)
    if other:
        ax.scatter([x for x, _ in other], [y for _, y in other], s=26, facecolors="none",
                   edgecolors="tab:orange", label=f"running or failed ({len(other)})", zorder=3)
    ax.set_xlabel(by)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {by}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = [
    "DEFAULT_FILE",
    "cell",
    "collect",
    "collect_from_view",
    "columns",
    "filter_rows",
    "flatten",
    "format_csv",
    "format_json",
    "number",
    "parse_batch",
    "plot",
    "read_blobs",
    "read_metrics",
    "sort_rows",
    "to_dataframe",
]
