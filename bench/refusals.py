"""Peak RSS of a real server answering JSON bodies at MAX_JSON_BODY_MB that cannot be valid.

    python -m bench.refusals [--budget 512] [--only million-ints]

One fresh server (no model: every body is refused before one would load); for each of BODIES
(tests/ops/test_refusals.py asserts on the same): the answer, its size, the seconds it took, the
server's VmHWM before and after, and the slowest /health meanwhile. A table, then one JSON line.
"""

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from bench.server import Server, running_server

JSON = {"Content-Type": "application/json"}
MIB = 1024 * 1024


def status_mb(pid: int, field: str) -> float:
    """A `VmHWM`/`VmRSS` line of /proc/<pid>/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def items_body(item: bytes, prefix: bytes = b'{"texts":[', suffix: bytes = b"]}") -> bytes:
    """As many comma-separated `item`s as fit just under 2 MiB (the default MAX_JSON_BODY_MB)."""
    count = (2 * MIB - len(prefix) - len(suffix) - 16) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix


# Each the shape of an attack at the body limit: many cheap items that each cost a Python object.
BODIES = {
    "million-ints": b'{"texts":[' + b",".join([b"1"] * 1_000_000) + b"]}",
    "strings": items_body(b'"a"'),
    "empty-lists": items_body(b"[]"),
    "empty-objects": items_body(b"{}"),
    "floats": items_body(b"1.5"),
    "unknown-keys": b'{"text":"hola",'
    + b",".join(b'"k%d":0' % i for i in range(2 * MIB // 12))[: 2 * MIB - 64].rpartition(b",")[0]
    + b"}",
    "nested-texts": b'{"texts":' + b"[" * 900_000 + b"]" * 100 + b"}",
}


class HealthProbe(threading.Thread):
    """Asks /health over and over while a hostile request is in flight; keeps the slowest answer."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.slowest_s = 0.0
        self.answers = 0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            if self.server.request("GET", "/health", timeout=30).status != 200:
                raise RuntimeError("/health did not answer 200")
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self.answers += 1
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--only", action="append", choices=list(BODIES))
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(
            Path(tmp),
            BACKEND="onnx",
            ONNX_DIR="/nonexistent",
            MEMORY_BUDGET_MB=str(args.budget),
            MAX_BATCH="32",
        ) as server,
    ):
        pid = server.process.pid
        for name in args.only or BODIES:
            body = BODIES[name]
            before = status_mb(pid, "VmHWM")
            probe = HealthProbe(server)
            probe.start()
            started = time.monotonic()
            response = server.request("POST", "/analyze", body, JSON, timeout=300)
            seconds = time.monotonic() - started
            probe.stop.set()
            probe.join(60)
            rows.append(
                {
                    "body": name,
                    "body_bytes": len(body),
                    "status": response.status,
                    "reply_bytes": len(response.body),
                    "seconds": round(seconds, 2),
                    "vmhwm_before_mb": round(before, 1),
                    "vmhwm_after_mb": round(status_mb(pid, "VmHWM"), 1),
                    "slowest_health_s": round(probe.slowest_s, 2),
                }
            )
            print(" | ".join(str(value) for value in rows[-1].values()), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
