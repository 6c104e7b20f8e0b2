"""The service under tracemalloc, for the profiler.

`python -m bench.profiling.traced PORT DIR FRAMES` serves main:app as start.sh does.

Tracing is already on when the process starts with `PYTHONTRACEMALLOC` (every import counted);
otherwise SIGUSR2 starts it, keeping FRAMES frames per allocation, and writes `DIR/tracing`.
Each SIGUSR1 writes a snapshot to DIR (`snapshot-<n>.pickle`, with the traced totals beside it
in `snapshot-<n>.json`). Both leave through signals and files rather than a route, so the app
itself never has a debug endpoint that a production server could be asked for.
"""

import itertools
import json
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

import uvicorn


def main(argv: list[str]) -> None:
    port, out, frames = int(argv[0]), Path(argv[1]), int(argv[2])
    numbers = itertools.count()

    def start_tracing(_signum: int, _frame: FrameType | None) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(frames)
        (out / "tracing").touch()

    def write_snapshot(_signum: int, _frame: FrameType | None) -> None:
        number = next(numbers)
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
        totals = {
            "traced_bytes": current,
            "traced_peak_bytes": peak,  # since the previous snapshot: the peak is reset below
            "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
        }
        (out / f"snapshot-{number}.json").write_text(json.dumps(totals))
        partial = out / f".snapshot-{number}.partial"
        snapshot.dump(str(partial))
        partial.rename(out / f"snapshot-{number}.pickle")  # the profiler waits for this name
        tracemalloc.reset_peak()

    signal.signal(signal.SIGUSR2, start_tracing)
    signal.signal(signal.SIGUSR1, write_snapshot)
    uvicorn.run(
        "main:app",
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="asyncio",
        http="h11",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
