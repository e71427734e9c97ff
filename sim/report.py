"""What a run shows: the final table, the timeline SVG and the JSON summary.

The timeline is written by hand: one lane per worker, time left to right.
In a lane, a thin bar along the top marks each lock holding (from its
acquire until it ended or its lease ran out); a thick bar marks each job the
worker held, coloured by how it ended (finished, refused or taken over,
failed, killed); grey hatching marks a pause; a red cross a kill.  Hover any
shape for details.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from rich.console import Console
from rich.table import Table

from .checker import RULES, CheckResult, Holding, proc_key
from .coverage import table_rows

if TYPE_CHECKING:
    from .runner import RunOutcome

COLOURS = {
    "finish": "#2e9e4f",
    "finish-refused": "#e08a1e",
    "lost": "#e08a1e",
    "fail": "#8a63c9",
    "killed": "#c93030",
    "open": "#7f8c99",
    "lock": "#3465a4",
}


def summary(outcome: RunOutcome) -> dict[str, Any]:
    """The ``--json`` summary: settings, figures, violations and how to repeat the run."""
    result = outcome.result
    return {
        "ok": result.ok and outcome.coverage.ok,
        "verdict": outcome.verdict,
        "seed": outcome.config.seed,
        "command": outcome.config.command(),
        "config": asdict(outcome.config),
        "figures": result.stats,
        "violations": [v.to_dict() for v in result.violations],
        "violations_by_rule": result.by_rule(),
        "coverage": outcome.coverage.to_dict(),
        "timed_out": outcome.timed_out,
        "workdir": str(outcome.workdir) if outcome.kept else None,
        "journal": str(outcome.journal_dir) if outcome.kept or outcome.config.out else None,
    }


def print_report(outcome: RunOutcome, console: Console) -> None:
    """The final table and, when there are any, the violations."""
    stats = outcome.result.stats
    table = Table(title=f"simulation, seed {outcome.config.seed}", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rec = stats.get("recovery_s", {})
    rows = [
        ("workers / jobs", f"{outcome.config.workers} / {len(outcome.expected_jobs or []) or '-'}"),
        ("jobs done", stats.get("jobs_done")),
        ("jobs failed", stats.get("jobs_failed")),
        ("duration (s)", stats.get("duration_s")),
        ("jobs/s", stats.get("jobs_per_s")),
        ("claims (retries)", f"{stats.get('claims')} ({stats.get('retries')})"),
        ("lock acquires (takeovers)",
         f"{stats.get('lock_acquires')} ({stats.get('lock_takeovers')})"),
        ("pushes", stats.get("pushes")),
        ("lost races", stats.get("lost_races")),
        ("injected push failures", stats.get("push_faults")),
        ("unknown outcomes", stats.get("unknown_outcomes")),
        ("fenced finishes (refused)", stats.get("fenced_finishes")),
        ("lock lost / revoked", f"{stats.get('lease_lost')} / {stats.get('revoked')}"),
        ("kills / pauses / restarts",
         f"{stats.get('kills')} / {stats.get('pauses')} / {stats.get('restarts')}"),
        ("recovery p50 / p99 / max (s)",
         f"{rec.get('p50')} / {rec.get('p99')} / {rec.get('max')} (n={rec.get('count')})"),
        ("local copies cleaned at restart", f"{stats.get('cleanups')}"),
        ("idle tail: last finish to last no-job (s)", stats.get("idle_tail_s")),
        ("idle tail judged / bound (s)",
         f"{stats.get('idle_tail_judged_s')} / {stats.get('idle_tail_bound_s')}"),
        ("violations", len(outcome.result.violations)),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    console.print(coverage_table(outcome))
    if not outcome.coverage.ok:
        console.print(f"[red]{outcome.coverage.message()}[/red]", soft_wrap=True)
    if outcome.result.violations:
        vt = Table(title="violations", show_header=True, header_style="bold red")
        vt.add_column("rule")
        vt.add_column("what happened")
        for v in outcome.result.violations[:50]:
            vt.add_row(v.rule, v.message)
        if len(outcome.result.violations) > 50:
            vt.add_row("...", f"{len(outcome.result.violations) - 50} more")
        console.print(vt)
        for rule in sorted(outcome.result.by_rule()):
            console.print(f"[red]{rule}[/red]: {RULES[rule]}")


def coverage_table(outcome: RunOutcome) -> Table:
    """How often each fault and event happened, against its minimum (sim/coverage.py)."""
    coverage = outcome.coverage
    title = "fault coverage" + ("" if coverage.checked else " (minimums off)")
    table = Table(title=title, show_header=True)
    table.add_column("fault or event")
    table.add_column("count", justify="right")
    table.add_column("minimum", justify="right")
    table.add_column("")
    for name, got, need, verdict in table_rows(coverage):
        style = "red" if verdict.startswith("SHORT") else None
        table.add_row(name, str(got), need, verdict, style=style)
    return table


# ---- the timeline ---------------------------------------------------------------------


def _spans(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per worker: job spans, pauses and kills, from the journals."""
    by_proc: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    faults: list[Mapping[str, Any]] = []
    for r in records:
        (faults if r.get("kind") == "fault" else by_proc[proc_key(r)]).append(r)
    kill_at = {proc_key(f): float(f["t"]) for f in faults if f.get("fault") == "kill"}
    lanes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for proc, recs in by_proc.items():
        recs = sorted(recs, key=lambda r: (r.get("t", 0.0), r.get("seq", 0)))
        worker = str(recs[0].get("worker"))
        last = float(recs[-1].get("t", 0.0))
        open_job: dict[str, Any] | None = None
        for r in recs:
            if r.get("kind") != "event":
                continue
            event = r.get("event")
            if event == "claim":
                if open_job is not None:
                    open_job["end"] = float(r["t"])
                    open_job.setdefault("how", "lost")
                open_job = {"kind": "job", "job": r.get("job"), "token": r.get("token"),
                            "attempt": r.get("attempt"), "start": float(r["t"]), "proc": proc}
                lanes[worker].append(open_job)
            elif event in ("finish", "finish-refused", "fail") and open_job is not None:
                open_job["end"], open_job["how"] = float(r["t"]), event
                open_job = None
            elif event == "revoked" and open_job is not None:
                open_job["how"] = "lost"
        if open_job is not None and "end" not in open_job:
            killed = kill_at.get(proc)
            open_job["end"] = killed if killed is not None else last
            open_job["how"] = "killed" if killed is not None else open_job.get("how", "open")
    pauses: dict[str, float] = {}
    for f in faults:
        worker = str(f.get("worker"))
        if f.get("fault") == "pause":
            pauses[worker] = float(f["t"])
        elif f.get("fault") == "resume" and worker in pauses:
            start = pauses.pop(worker)
            lanes[worker].append({"kind": "pause", "start": start, "end": float(f["t"])})
        elif f.get("fault") == "kill" and not f.get("at_end"):
            lanes[worker].append({"kind": "kill", "start": float(f["t"]), "end": float(f["t"])})
    return lanes


def timeline_svg(
    records: Iterable[Mapping[str, Any]], holdings: Iterable[Holding], title: str = ""
) -> str:
    """The timeline of a run as an SVG document."""
    records = list(records)
    lanes = _spans(records)
    holdings = list(holdings)
    times = [float(r["t"]) for r in records if "t" in r]
    if not times:
        return '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40"></svg>\n'
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-3)
    names = sorted(set(lanes) | {h.worker for h in holdings})
    left, top, lane_h, width = 70, 40, 26, 1400
    plot_w = width - left - 20
    height = top + lane_h * len(names) + 40

    def x(t: float) -> float:
        return round(left + (min(max(t, t0), t1) - t0) / span * plot_w, 2)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        "<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
        "patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" fill=\"#9aa3ad\"/>"
        "</pattern></defs>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" font-size="13">{escape(title)}</text>',
        f'<text x="{left}" y="30" fill="#555">thin blue: lock holding; thick: job '
        "(green finished, orange refused or taken over, purple failed, red killed); "
        "hatched: paused; red x: kill</text>",
    ]
    step = _tick(span)
    k = 0
    while k * step <= span + 1e-9:
        tx = x(t0 + k * step)
        out.append(f'<line x1="{tx}" y1="{top - 4}" x2="{tx}" y2="{height - 30}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{tx}" y="{height - 16}" text-anchor="middle">{k * step:g}s</text>')
        k += 1
    for i, name in enumerate(names):
        y = top + i * lane_h
        out.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{escape(name)}</text>')
        out.append(f'<line x1="{left}" y1="{y + lane_h - 2}" x2="{left + plot_w}" '
                   f'y2="{y + lane_h - 2}" stroke="#f3f3f3"/>')
        for s in lanes.get(name, ()):
            x1, x2 = x(s["start"]), x(s["end"])
            if s["kind"] == "pause":
                out.append(_rect(x1, y + 2, x2 - x1, lane_h - 6, "url(#hatch)",
                                 f"paused {s['end'] - s['start']:.2f}s", opacity=0.7))
            elif s["kind"] == "kill":
                out.append(
                    f'<g stroke="#c93030" stroke-width="2"><title>kill at '
                    f'{s["start"] - t0:.2f}s</title><line x1="{x1 - 4}" y1="{y + 4}" '
                    f'x2="{x1 + 4}" y2="{y + 18}"/><line x1="{x1 + 4}" y1="{y + 4}" '
                    f'x2="{x1 - 4}" y2="{y + 18}"/></g>'
                )
            else:
                how = str(s.get("how", "open"))
                tip = (f"{s['job']} attempt {s['attempt']} token {s['token']} ({s['proc']}): "
                       f"{how}, {s['start'] - t0:.2f}s to {s['end'] - t0:.2f}s")
                out.append(_rect(x1, y + 8, x2 - x1, lane_h - 14, COLOURS.get(how, "#7f8c99"),
                                 tip))
        for h in holdings:
            if h.worker != name:
                continue
            end = h.valid_until if math.isfinite(h.valid_until) else t1
            x1, x2 = x(h.start), x(end)
            out.append(_rect(x1, y + 2, x2 - x1, 4, COLOURS["lock"],
                             f"lock token {h.token} ({h.proc}), until {h.end_reason}"))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _rect(x: float, y: float, w: float, h: float, fill: str, title: str,
          opacity: float = 1.0) -> str:
    w = max(w, 1.0)
    return (f'<rect x="{x}" y="{y}" width="{round(w, 2)}" height="{h}" fill={quoteattr(fill)} '
            f'opacity="{opacity}"><title>{escape(title)}</title></rect>')


def _tick(span: float) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600):
        if span / step <= 20:
            return float(step)
    return 1200.0


def write_timeline(path: Path, outcome: RunOutcome) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    title = (f"seed {outcome.config.seed}: {outcome.config.workers} workers, "
             f"{outcome.result.stats.get('jobs_done')} jobs, lease {outcome.config.lease}s")
    path.write_text(timeline_svg(outcome.records, outcome.result.holdings, title),
                    encoding="utf-8")
    return path


__all__ = [
    "CheckResult",
    "coverage_table",
    "print_report",
    "summary",
    "timeline_svg",
    "write_timeline",
]
