"""Hostile CSV and JSON Lines uploads to `/analyze/file`, each against a fresh server in a real memory
cgroup (needs root: it writes the cgroup hierarchy):

    .venv/bin/python -m bench.records --model DIR [--root DIR] [--limit-mb 512] [--only NAME ...]

The server serves the exported model at --model (onnx) for es and en, with its budget read from
the cgroup. Each upload is its only request; the line printed says the answer (status, body
size, seconds), the peak of the cgroup's anonymous memory (v1 `total_rss`, v2 `anon`, sampled
every 20 ms, as issue 21 measured it), the cgroup's own peak, its OOM kills, and whether the same
server process answers an ordinary `/analyze` afterwards. `--root` serves another checkout's code,
so the same uploads measure the code before a change and after it.
"""

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.filebacked import cgroup_counters, memory_cgroup
from bench.server import ROOT, Response, Server, multipart, running_server

MB = 1024 * 1024


def quoted_header() -> bytes:
    """Issue 21's: a header that is one record of 3 million quoted fields, each on its own line (33 MB)."""
    return b'"columns\n",' * 3_000_000 + b"\n1,hola\n"


def wide_row() -> bytes:
    """Issue 21's: a data row of 8 million quoted fields over 8 million lines (88 MB, under MAX_BODY_MB)."""
    return b"id,text\n1,me encanta\n" + b'"valuess\n",' * 8_000_000 + b"\n3,lo odio\n"


def wide_header() -> bytes:
    """Issue 21's: a header of 1 million quoted columns, each on its own line (12 MB), without `text`."""
    return b",".join(b'"c%07d\n"' % i for i in range(1_000_000)) + b"\n1,\n"


def unclosed_header() -> bytes:
    """Issue 21's: a header that opens a quote and never closes it, then 19 MB of rows."""
    return b'id,"text\n' + b"1,hola que tal\n" * 1_300_000


def unclosed_row() -> bytes:
    """A data row that opens a quote and never closes it, then 19 MB of rows it swallows."""
    return b'id,text\n1,me encanta\n2,"hola\n' + b"3,hola que tal\n" * 1_300_000


def blank_lines() -> bytes:
    """30 million blank lines (CRLF and LF) between the header and the only row (45 MB)."""
    return b"id,text\n" + b"\r\n\n" * 15_000_000 + b"1,me encanta\n"


def nul_line() -> bytes:
    """A 30 MB line of NUL bytes (no line end in it) between two rows."""
    return b"id,text\n1,me encanta\n2," + b"\0" * (30 * MB) + b"\n3,lo odio\n"


def long_json_line() -> bytes:
    """A 60 MB JSON line between two rows."""
    return b'{"text": "me encanta"}\n{"text": "' + b"a" * (60 * MB) + b'"}\n{"text": "lo odio"}\n'


def deep_json_lines() -> bytes:
    """Rows that are nested 60,000 deep or hold a 100,000-digit number, between good rows."""
    deep = b'{"text": "hola", "id": ' + b"[" * 60_000 + b"]" * 60_000 + b"}"
    huge = b'{"text": "hola", "id": ' + b"9" * 100_000 + b"}"
    return b"\n".join([b'{"text": "me encanta", "id": 1}', deep, huge] * 200 + [b'{"text": "fin", "id": 2}'])


def surrogate_ids() -> bytes:
    """Issue 21's: 1,000 JSON lines, row 500's id a lone surrogate (valid JSON)."""
    rows = [{"text": f"texto {i}", "id": "\udfff" if i == 500 else i} for i in range(1, 1001)]
    return "\n".join(json.dumps(row) for row in rows).encode()


def surrogate_key() -> bytes:
    """Issue 21's: a first JSON line whose only key is a lone surrogate."""
    return b'{"\\udc80": 1}\n{"text": "hola"}\n'


# name: (file name, generator). The file name tells the format.
UPLOADS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "quoted_header": ("rows.csv", quoted_header),
    "wide_row": ("rows.csv", wide_row),
    "wide_header": ("rows.csv", wide_header),
    "unclosed_header": ("rows.csv", unclosed_header),
    "unclosed_row": ("rows.csv", unclosed_row),
    "blank_lines": ("rows.csv", blank_lines),
    "nul_line": ("rows.csv", nul_line),
    "long_json_line": ("rows.jsonl", long_json_line),
    "deep_json_lines": ("rows.jsonl", deep_json_lines),
    "surrogate_ids": ("rows.jsonl", surrogate_ids),
    "surrogate_key": ("rows.jsonl", surrogate_key),
}


def upload(server: Server, name: str, data: bytes, timeout: float = 600, **form: str) -> Response:
    file_name = UPLOADS[name][0] if name in UPLOADS else name
    body, content_type = multipart({"id_column": "id", **form}, file_name, data, "application/octet-stream")
    return server.request("POST", "/analyze/file", body, {"Content-Type": content_type}, timeout=timeout)


def anon_mb(cgroup: Path) -> float:
    """The cgroup's anonymous memory now: v1 memory.stat `total_rss`, v2 `anon`."""
    stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
    return int(stat.get("total_rss", stat.get("anon", 0))) / MB


def measure(name: str, model: Path, limit_mb: int, root: Path) -> str:
    data = UPLOADS[name][1]()
    workdir = Path(tempfile.mkdtemp(prefix="records-"))
    with memory_cgroup(limit_mb) as cgroup:
        server_env = {"MODEL_SENTIMENT_ES": str(model), "MODEL_SENTIMENT_EN": str(model)}
        with running_server(
            workdir,
            root=root,
            cgroup=cgroup,
            NUM_THREADS="1",
            BACKEND="onnx",
            MEMORY_BUDGET_MB=None,
            **server_env,
        ) as server:
            pid = server.pid
            warm = upload(server, "warm.csv", b"id,text\n1,hola\n")  # the model loaded before measuring
            assert warm.status == 200, warm.body
            peak, answers = anon_mb(cgroup), []
            started = time.monotonic()

            def send() -> None:
                try:
                    answers.append(upload(server, name, data))
                except Exception as error:  # the server was killed mid-answer: no (whole) reply
                    answers.append(Response(0, {}, str(error).encode()))

            sender = threading.Thread(target=send)
            sender.start()
            while sender.is_alive():
                if server.process.poll() is None:
                    peak = max(peak, anon_mb(cgroup))
                time.sleep(0.02)
            seconds = time.monotonic() - started
            (answer,) = answers
            alive = server.process.poll() is None and server.pid == pid
            after = "-"
            if alive:
                check_started = time.monotonic()
                check = server.request(
                    "POST", "/analyze", b'{"text": "hola"}', {"Content-Type": "application/json"}
                )
                after = f"{check.status} in {time.monotonic() - check_started:.2f} s"
            counters = cgroup_counters(cgroup)
    return (
        f"{name:16s} {len(data) / MB:6.1f} MB  answer {answer.status} ({len(answer.body):,} B) "
        f"in {seconds:.1f} s  anon peak {peak:.0f} MB  cgroup peak {counters['peak_mb']:.0f} MB  "
        f"OOM kills {counters['oom_kills']}  same server {'yes' if alive else 'no'}  /analyze after: {after}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="an exported onnx model dir")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="serve this checkout's code (default: this one)"
    )
    parser.add_argument("--limit-mb", type=int, default=512)
    parser.add_argument("--only", nargs="*", choices=list(UPLOADS), default=list(UPLOADS))
    args = parser.parse_args()
    for name in args.only:
        print(measure(name, args.model.resolve(), args.limit_mb, args.root), flush=True)


if __name__ == "__main__":
    main()
