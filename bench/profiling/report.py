"""Turn a profiling run (RSS samples, request results, tracemalloc snapshots, a memray capture)
into Markdown tables: where memory is allocated, what stays, and what grows after warm-up.

Allocation sites are given two ways: the line that allocated (often inside a library), and the
first line of this project on the stack that led there, which is the line one can change.
"""

import statistics
import tracemalloc
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.profiling.load import Result
from bench.server import ROOT

MB = 1024 * 1024
_PROFILER = Path(__file__).resolve().parent
_VENV = ROOT / ".venv"
NO_PROJECT_FRAME = "(no project line on the stack: startup or a library's own work)"


@dataclass
class Site:
    where: str
    size: float  # bytes
    count: int


@cache
def short_path(filename: str, lineno: int) -> str:
    """Project files relative to the root, libraries from their package, the stdlib by name."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in filename:
            return f"{filename.split(marker, 1)[1]}:{lineno}"
    path = Path(filename)
    if path.is_absolute() and path.is_relative_to(ROOT):
        return f"{path.relative_to(ROOT)}:{lineno}"
    if "/lib/python3" in filename:
        return f"{filename.rsplit('/lib/', 1)[1]}:{lineno}"
    return f"{filename}:{lineno}"


@cache
def is_project(filename: str) -> bool:
    path = Path(filename)
    return (
        path.is_absolute()
        and path.is_relative_to(ROOT)
        and not path.is_relative_to(_VENV)
        and not path.is_relative_to(_PROFILER)
    )


def top(sites: dict[str, Site], limit: int) -> list[Site]:
    return sorted(sites.values(), key=lambda site: site.size, reverse=True)[:limit]


def _add(sites: dict[str, Site], where: str, size: float, count: int = 1) -> None:
    site = sites.get(where)
    if site is None:
        sites[where] = Site(where, size, count)
    else:
        site.size += size
        site.count += count


def _table(sites: Sequence[Site], total: float) -> str:
    rows = ["| # | site | MB | share | blocks |", "|---:|---|---:|---:|---:|"]
    for rank, site in enumerate(sites, 1):
        share = f"{100 * site.size / total:.1f} %" if total else "–"
        rows.append(f"| {rank} | `{site.where}` | {site.size / MB:.2f} | {share} | {site.count:,} |")
    return "\n".join(rows)


# tracemalloc


def load_snapshot(path: Path) -> tracemalloc.Snapshot:
    snapshot = tracemalloc.Snapshot.load(str(path))
    return snapshot.filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<unknown>")]
    )


def tracemalloc_sites(snapshot: tracemalloc.Snapshot) -> tuple[dict[str, Site], dict[str, Site]]:
    """Traced bytes by allocating line, and by the most recent project line on the stack."""
    by_line: dict[str, Site] = {}
    by_project: dict[str, Site] = {}
    for stat in snapshot.statistics("traceback"):  # one per distinct stack: far fewer than traces
        frames = stat.traceback  # oldest first
        newest = frames[-1]
        _add(by_line, short_path(newest.filename, newest.lineno), stat.size, stat.count)
        project = next((f for f in reversed(frames) if is_project(f.filename)), None)
        where = short_path(project.filename, project.lineno) if project else NO_PROJECT_FRAME
        _add(by_project, where, stat.size, stat.count)
    return by_line, by_project


def growth_table(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, limit: int) -> str:
    """Lines whose retained memory grew the most between two snapshots."""
    differences = [d for d in after.compare_to(before, "lineno") if d.size_diff > 0][:limit]
    if not differences:
        return "Nothing grew."
    rows = ["| # | site | grew (MB) | now (MB) | new blocks |", "|---:|---|---:|---:|---:|"]
    for rank, diff in enumerate(differences, 1):
        frame = diff.traceback[-1]
        rows.append(
            f"| {rank} | `{short_path(frame.filename, frame.lineno)}` | {diff.size_diff / MB:.3f} | "
            f"{diff.size / MB:.2f} | {diff.count_diff:+,} |"
        )
    return "\n".join(rows)


def tracemalloc_section(
    snapshots: dict[str, tracemalloc.Snapshot], totals: dict[str, dict], limit: int, scope: str
) -> str:
    end = snapshots["end"]
    by_line, by_project = tracemalloc_sites(end)
    traced = sum(site.size for site in by_line.values())
    lines = [
        "## Python allocations (tracemalloc)",
        "",
        f"Traced: {scope}.",
        "",
        "| snapshot | traced (MB) | peak since the previous one (MB) | tracemalloc's own (MB) |",
        "|---|---:|---:|---:|",
    ]
    for name, values in totals.items():
        lines.append(
            f"| {name} | {values['traced_bytes'] / MB:.1f} | {values['traced_peak_bytes'] / MB:.1f} | "
            f"{values['tracemalloc_overhead_bytes'] / MB:.1f} |"
        )
    lines += [
        "",
        "tracemalloc sees only what Python's allocators hand out: onnxruntime's, torch's and "
        "Tesseract's own buffers are native and show up in the RSS curve and in memray's tables, not here.",
        "",
        f"### Retained at the end, by allocating line (top {limit})",
        "",
        _table(top(by_line, limit), traced),
        "",
        f"### Retained at the end, by the project line that led there (top {limit})",
        "",
        _table(top(by_project, limit), traced),
        "",
        "### Growth over the second half of the load (leak candidates)",
        "",
        growth_table(snapshots["half"], end, limit),
    ]
    return "\n".join(lines)


# memray


@dataclass
class MemrayFindings:
    text: str
    project_sites: list[Site]  # the top sites by project line, without the no-project-line bucket


def memray_section(capture: Path, limit: int) -> MemrayFindings:
    """Sites holding memory at the heap's high-water mark, by allocating line and by project line."""
    from memray import FileReader

    reader = FileReader(str(capture))
    by_line: dict[str, Site] = {}
    by_project: dict[str, Site] = {}
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        stack = record.stack_trace()  # newest first: (function, filename, lineno)
        where = short_path(stack[0][1], stack[0][2]) if stack else "(no Python frame: a native thread)"
        _add(by_line, where, record.size, record.n_allocations)
        project = next((frame for frame in stack if is_project(frame[1])), None)
        _add(
            by_project,
            short_path(project[1], project[2]) if project else NO_PROJECT_FRAME,
            record.size,
            record.n_allocations,
        )
    peak, allocations = reader.metadata.peak_memory, reader.metadata.total_allocations
    reader.close()
    text = "\n".join(
        [
            "## Native and Python allocations at the heap's high-water mark (memray)",
            "",
            f"memray saw a heap peak of {peak / MB:.1f} MB over {allocations:,} allocations. Each site is "
            "the Python line on top of the stack when the allocation was made (calls into onnxruntime, "
            "torch or Tesseract are charged to the line that called them). memray counts memory when it is "
            "allocated or mapped, not when it is touched: a region reserved and barely used (torch's import "
            "reserves large ones) counts in full, so these figures can exceed RSS.",
            "",
            f"### By allocating line (top {limit})",
            "",
            _table(top(by_line, limit), peak),
            "",
            f"### By the project line that led there (top {limit})",
            "",
            _table(top(by_project, limit), peak),
        ]
    )
    project_sites = [site for site in top(by_project, limit + 1) if site.where != NO_PROJECT_FRAME]
    return MemrayFindings(text, project_sites[:limit])


# RSS and requests


def text_chart(
    samples: Sequence[tuple[float, float]], budget_mb: float, width: int = 72, height: int = 12
) -> str:
    """A text chart of RSS over time, with the budget as a line of `=` when it is in range."""
    if not samples:
        return "(no samples)"
    end = samples[-1][0] or 1.0
    columns: list[float] = []
    for column in range(width):
        window = [mb for t, mb in samples if column <= t / end * (width - 1) < column + 1]
        columns.append(max(window) if window else (columns[-1] if columns else samples[0][1]))
    top_mb = max(max(columns), budget_mb) * 1.05
    rows = []
    for row in range(height, 0, -1):
        level = top_mb * row / height
        below = top_mb * (row - 1) / height
        budget_row = below < budget_mb <= level
        line = "".join(
            "█" if mb >= level - top_mb / height / 2 else ("=" if budget_row else " ") for mb in columns
        )
        rows.append(f"{level:7.0f} MB |{line}")
    rows.append(" " * 11 + "+" + "-" * width)
    rows.append(" " * 12 + f"0 s{'':{width - 12}}{end:6.1f} s")
    return "\n".join(rows)


def rss_section(
    samples: Sequence[tuple[float, float]], marks: dict[str, float], budget_mb: float, note: str
) -> str:
    """A text chart of RSS over time, and RSS at each phase boundary and at the peak."""
    if not samples:
        return "(no samples)"
    peak_t, peak_mb = max(samples, key=lambda sample: sample[1])

    def at(t: float) -> float:
        return min(samples, key=lambda sample: abs(sample[0] - t))[1]

    rows = ["| moment | time (s) | RSS (MB) |", "|---|---:|---:|"]
    rows += [f"| {name} | {t:.1f} | {at(t):.1f} |" for name, t in marks.items()]
    rows.append(f"| peak | {peak_t:.1f} | {peak_mb:.1f} |")
    chart = text_chart(samples, budget_mb)
    return "\n".join(
        [
            note,
            "",
            "```text",
            chart,
            "```",
            "",
            *rows,
            "",
            f"Budget ({'=' * 3} in the chart): {budget_mb:.0f} MB.",
        ]
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def requests_table(results: Iterable[Result]) -> str:
    groups: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        groups[result.call.name].append(result)
    rows = ["| request | n | statuses | p50 (ms) | p95 (ms) | max (ms) |", "|---|---:|---|---:|---:|---:|"]
    for name in sorted(groups, key=lambda key: (groups[key][0].call.kind, key)):
        group = groups[name]
        counts: dict[int, int] = defaultdict(int)
        for result in group:
            counts[result.status] += 1
        statuses = ", ".join(f"{status or 'conn. error'}×{n}" for status, n in sorted(counts.items()))
        latencies = [result.seconds * 1000 for result in group]
        rows.append(
            f"| {name} | {len(group)} | {statuses} | {statistics.median(latencies):.1f} | "
            f"{percentile(latencies, 0.95):.1f} | {max(latencies):.1f} |"
        )
    return "\n".join(rows)
