"""bench/swarm.py: Locust's users keep the load closed-loop, replay a plan in order, and seed their texts.

Against a tiny stdlib server that records what it receives and how many requests it holds at once.
"""

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.serving import tweet
from bench.swarm import Job, Request, Swarm


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.bodies: list[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
            self.server.bodies.append(body)
        time.sleep(0.02)  # long enough that every user has a request in flight at once
        with self.server.lock:
            self.server.in_flight -= 1
        status = 413 if body.startswith(b"x") and len(body) > 100 else 200
        answer = json.dumps({"got": len(body)}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    """One Locust child for the module: it takes a few seconds to import."""
    with Swarm() as child:
        yield child


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_plan_is_replayed_once_in_order_with_one_request_per_user_in_flight(
    recorder: Recorder, swarm: Swarm
) -> None:
    plan = [Request("POST", "/analyze", b"x" * size, "application/json") for size in range(0, 200, 10)]
    plan.append(Request("GET", "/health"))
    outcome = swarm.run(Job(recorder.url, users=3, timeout_s=30, plan=plan))
    records = sorted(outcome.records, key=lambda record: record.index)
    assert [record.index for record in records] == list(range(len(plan)))
    assert [record.status for record in records] == [200] * 11 + [413] * 9 + [200]
    assert sorted(recorder.bodies) == sorted(request.body for request in plan)
    assert recorder.most_in_flight == 3  # closed loop: never more than one request per user
    assert {record.user for record in records} == {0, 1, 2}
    assert all(outcome.started <= record.at <= outcome.ended for record in records)


def test_texts_are_seeded_per_user_and_none_is_sent_after_the_deadline(
    recorder: Recorder, swarm: Swarm
) -> None:
    outcome = swarm.run(Job(recorder.url, users=2, timeout_s=30, text=tweet, seconds=0.5))
    deadline = outcome.started + 0.5
    assert all(record.at < deadline for record in outcome.records)
    assert all(record.status == 200 for record in outcome.records)
    assert recorder.most_in_flight <= 2
    expected: Counter[str] = Counter()
    for user in (0, 1):
        sent = sorted(record.index for record in outcome.records if record.user == user)
        assert sent and sent == list(range(len(sent)))  # each user's own count, from 0
        rng = random.Random(user)
        expected.update(tweet(rng) for _ in sent)
    assert Counter(json.loads(body)["text"] for body in recorder.bodies) == expected


def test_a_server_that_is_gone_is_status_0_not_an_error(swarm: Swarm) -> None:
    job = Job("http://127.0.0.1:9", users=1, timeout_s=5, plan=[Request("GET", "/health")])
    assert [record.status for record in swarm.run(job).records] == [0]
