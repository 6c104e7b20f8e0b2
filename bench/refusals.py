"""Peak RSS of a real server answering JSON bodies at MAX_JSON_BODY_MB that cannot be valid.

    python -m bench.refusals [--budget 512] [--only million-ints]

One fresh server (no model: every body is refused before one would load); for each body of
tests/ops/test_refusals.py: the answer, its size, the seconds it took, the server's VmHWM before
and after, and the slowest /health answered meanwhile. Prints a table, then one JSON line.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.ops.server import running_server
from tests.ops.test_refusals import BODIES, JSON, HealthProbe, status_mb


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
