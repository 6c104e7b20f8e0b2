"""How many file-backed pages of a model's own files a call reads: its allowance in the budget.

Mapped weights are clean file pages: the kernel may drop them under pressure and read them back
on the next call. What a call must find resident, or fault in again, is the pages it references.
The kernel tells: `/proc/self/clear_refs` resets every page's referenced bit, and after the call
`/proc/self/smaps` sums `Referenced` per mapping. Where clear_refs cannot be written, the
mappings' resident size stands in (an upper bound).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SMAPS = Path("/proc/self/smaps")
CLEAR_REFS = Path("/proc/self/clear_refs")
_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def mapped_kb(prefix: Path, smaps: Path = SMAPS) -> dict[str, int]:
    """`Rss` and `Referenced` (kB) summed over the mappings of files under `prefix`."""
    totals = {"Rss": 0, "Referenced": 0}
    inside = False
    wanted = str(prefix).rstrip("/") + "/"
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return totals
    for line in lines:
        header = _MAPPING.match(line)
        if header is not None:
            inside = header.group(1).startswith(wanted)
            continue
        if inside:
            name, _, rest = line.partition(":")
            if name in totals:
                totals[name] += int(rest.split()[0])
    return totals


@dataclass
class Touched:
    mb: float = 0.0


@contextmanager
def referenced(prefix: Path, smaps: Path = SMAPS, clear_refs: Path = CLEAR_REFS) -> Iterator[Touched]:
    """Measure the MB of files under `prefix` that the block references."""
    touched = Touched()
    try:
        clear_refs.write_text("1")
        field = "Referenced"
    except OSError:
        field = "Rss"
    yield touched
    touched.mb = mapped_kb(prefix, smaps)[field] / 1024
