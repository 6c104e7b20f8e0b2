"""The file-backed pages a model's calls read: its allowance in the budget while it runs.

Mapped weights are clean file pages: the kernel may drop them under pressure and read them back
on the next call. A call of a transformer runs every layer, so it reads nearly all of the weights
onnxruntime mapped: measured without memory pressure, one call of the RoBERTuito-scale variant
references 111.1 of its 115.3 mapped MB (MEMORY.md, issue 11). The allowance is therefore the size
of the model's mappings, read from /proc/self/smaps: unlike the pages referenced or resident, it
does not shrink when the cgroup is already short of memory, which is when it matters.
"""

import re
from collections.abc import Iterable
from pathlib import Path

SMAPS = Path("/proc/self/smaps")
MAPS = Path("/proc/self/maps")  # smaps' header lines alone: a few hundred, not ~14,000
READ_CHUNK = 1 << 20
_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def mapped_kb(prefix: Path, smaps: Path = SMAPS) -> dict[str, int]:
    """`Size`, `Rss` and `Referenced` (kB) summed over the mappings of files under `prefix`."""
    totals = {"Size": 0, "Rss": 0, "Referenced": 0}
    inside = False
    wanted = str(prefix).rstrip("/") + "/"
    try:
        lines = smaps.read_text().splitlines()
    except OSError:
        return totals
    for line in lines:
        header = _MAPPING.match(line)
        if header is not None:
            inside = header.group(3).startswith(wanted)
            continue
        if inside:
            name, _, rest = line.partition(":")
            if name in totals:
                totals[name] += int(rest.split()[0])
    return totals


def mapped_mb(prefix: Path, maps: Path = MAPS) -> float:
    """The MB of files under `prefix` that this process maps, from the address ranges in `maps`
    (reading smaps costs ~11 ms of CPU with onnxruntime loaded, 0.1 s at 0.1 CPU, at every load)."""
    wanted = str(prefix).rstrip("/") + "/"
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0.0
    total = 0
    for line in lines:
        mapping = _MAPPING.match(line)
        if mapping is not None and mapping.group(3).startswith(wanted):
            total += int(mapping.group(2), 16) - int(mapping.group(1), 16)
    return total / 2**20


def read_ahead(files: Iterable[Path]) -> None:
    """Read `files` through once, 1 MB at a time, before onnxruntime maps them: on a cold page cache
    its page-by-page faults over the weights cost more CPU than this read, measured at RoBERTuito
    scale and full speed as 0.36-0.41 s against 0.15-0.18 s for the variant's session and probe
    (MEMORY.md, issue 22). Used for the plain model only: for the variant, at 0.1 CPU, the read cost
    more than it saved (MEMORY.md, issue 22, helper wake4). Pages already cached are copied at
    memory speed."""
    buffer = bytearray(READ_CHUNK)
    for path in files:
        try:
            with path.open("rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
        except OSError:  # missing or unreadable: the session's own open says why
            continue
