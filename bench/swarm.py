"""Closed-loop HTTP load by Locust, run in a child process of its own.

Locust's users (FastHttpUser: geventhttpclient on gevent greenlets, keep-alive) send the load;
each user sends a request, reads the whole answer, then sends the next, so `users` is the number
of requests in flight, as the hand-written thread loops had it. Locust monkey-patches the
interpreter with gevent when imported, and the benchmark and the profiler start servers, sample
RSS from threads and run under pytest; so Locust only ever runs in a child (`Swarm`), which takes
jobs over a pipe and answers one `Record` per request. Timing is taken around each request with
`time.perf_counter` (a system-wide monotonic clock on Linux, so the parent can compare it with its own).

    with Swarm() as swarm:
        outcome = swarm.run(Job("http://127.0.0.1:8000", users=8, timeout_s=300, text=tweet, seconds=20))
"""

import json
import os
import pickle
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True)
class Job:
    """`users` closed-loop clients against `base_url`. Either they share `plan`, each taking the
    next request in order until none is left; or each sends POST /analyze {"text": text(rng)},
    its rng seeded with its number (0, 1, ...), until `seconds` after the start (a request in
    flight then is answered and counted, none is sent after)."""

    base_url: str
    users: int
    timeout_s: float
    plan: list[Request] | None = None
    text: Callable[[random.Random], str] | None = None  # a module-level function: it is pickled
    seconds: float = 0.0


@dataclass(frozen=True)
class Record:
    user: int
    index: int  # the plan's index, or the user's own count of requests
    status: int  # 0: no answer (the connection failed, and again once reopened)
    at: float  # perf_counter when it was sent
    seconds: float


@dataclass
class Outcome:
    started: float  # perf_counter before the first user started
    ended: float  # perf_counter after the last one finished
    records: list[Record] = field(default_factory=list)


class Swarm:
    """The Locust child: started on entry, ended on exit; `run` one job at a time."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Swarm":
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.swarm"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        return self

    def run(self, job: Job) -> Outcome:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        pickle.dump(job, process.stdin)
        process.stdin.flush()
        try:
            answer = pickle.load(process.stdout)
        except EOFError:
            ended = process.wait()
            raise RuntimeError(f"the Locust child ended (exit code {ended}); see its stderr") from None
        if isinstance(answer, str):
            raise RuntimeError(f"the Locust child failed: {answer}")
        return answer

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def _run(job: Job) -> Outcome | str:
    """One job in this (gevent-patched) process: Locust users in a closed loop, then their records."""
    from locust import FastHttpUser, constant, task
    from locust.env import Environment
    from locust.exception import StopUser

    deadline = float("inf")  # set just before the users start
    plan = iter(enumerate(job.plan)) if job.plan is not None else None
    records: list[Record] = []
    errors: list[str] = []
    numbers = iter(range(job.users))

    class Client(FastHttpUser):
        host = job.base_url
        wait_time = constant(0)
        network_timeout = connection_timeout = job.timeout_s
        max_retries = 1  # a dropped keep-alive connection is reopened once

        def on_start(self) -> None:
            self.number = next(numbers)
            self.rng = random.Random(self.number)
            self.sent = 0

        def next_request(self) -> tuple[int, Request] | None:
            if plan is not None:
                return next(plan, None)
            if time.perf_counter() >= deadline or job.text is None:
                return None
            self.sent += 1
            body = json.dumps({"text": job.text(self.rng)}).encode()
            return self.sent - 1, Request("POST", "/analyze", body, "application/json")

        @task
        def send(self) -> None:
            try:
                item = self.next_request()
                if item is None:
                    raise StopUser()
                index, request = item
                headers = {"accept-encoding": "identity"}  # what http.client sent: no compression
                if request.content_type:
                    headers["content-type"] = request.content_type
                at = time.perf_counter()
                body = request.body or None
                response = self.client.request(request.method, request.path, data=body, headers=headers)
                seconds = time.perf_counter() - at
                records.append(Record(self.number, index, response.status_code or 0, at, seconds))
            except StopUser:
                raise
            except Exception as error:  # a bug here must end the job, not loop forever
                errors.append(f"{type(error).__name__}: {error}")
                raise StopUser() from error

    environment = Environment(user_classes=[Client], catch_exceptions=False)
    runner = environment.create_local_runner()
    outcome = Outcome(started=time.perf_counter(), ended=0.0, records=records)
    deadline = outcome.started + job.seconds
    runner.spawn_users({Client.__name__: job.users}, wait=True)  # all at once; returns when all have stopped
    outcome.ended = time.perf_counter()
    runner.quit()
    return f"{len(errors)} requests raised, first: {errors[0]}" if errors else outcome


def main() -> None:
    """Serve jobs from stdin until it closes. Answers go to the original stdout; anything else that
    writes to stdout (a stray print, a library) goes to stderr instead, so the pipe stays clean."""
    import locust  # noqa: F401 - first: it monkey-patches the interpreter with gevent

    answers: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    jobs = sys.stdin.buffer
    while True:
        try:
            job = pickle.load(jobs)
        except EOFError:
            return
        pickle.dump(_run(job), answers)
        answers.flush()


if __name__ == "__main__":
    from bench.swarm import main as serve  # the module's own classes, so the parent can unpickle them

    serve()
