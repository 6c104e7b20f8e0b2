"""Connections, below the ASGI app: what uvicorn's h11 protocol lacks against hostile clients.

uvicorn closes a kept-alive connection that stays idle, but has no deadline for a request's
headers: a client that sends half a header and stalls holds its socket forever, and ~20,000 of
them exhaust the process's file descriptors (then asyncio logs every failed accept, and nothing
that opens a file works). The ASGI middlewares (REQUEST_TIMEOUT_S) only see a request once its
headers are complete. So `GuardedH11Protocol`, which `service/ops/serve.py` makes the server's
h11 protocol, adds:
- a header deadline: a request's headers must arrive within HEADER_TIMEOUT_S of its first byte
  (or of the connection's opening), else 408 and the connection is closed; so must the rest of
  a body the app answered without reading (a 401, 413 or 429);
- a bound on a request's head (request line and headers): 16 KB, else 431. h11 bounds only what
  it buffers between reads, so a head that arrives in one read (up to 256 KB) got through;
- a minimum body rate: a request body must arrive at BODY_MIN_RATE_KB_S on average from its
  first byte once BODY_RATE_GRACE_S have passed (while the app holds unread bytes, reading is
  paused and the time is not the client's), else 408 and the connection is closed: 520
  connections trickling a byte every 5 s held every slot for REQUEST_TIMEOUT_S (issue 21);
- a connection cap: past MAX_CONNECTIONS open connections (fewer when the descriptor limit is
  lower) a new one takes the place of a connection that has been wasting its slot for SHED_AFTER_S
  (a body behind the minimum rate, headers not complete, or idle between requests), which is
  answered 408 and closed; with none to shed, the new one is answered 503 + Retry-After at once,
  without reading it, and closed. So trickling clients cannot lock out real ones, even within
  the grace their bodies get.
asyncio accepts up to the listen backlog per loop tick before any of those connections reaches
`connection_made` (three ticks later), so the cap leaves room for a few such bursts, and serve.py
keeps the backlog small (BACKLOG). Should accept still fail for want of descriptors, asyncio logs
each failure, up to a backlog's worth per tick: `RepeatedErrorFilter` keeps that to a line a minute.
asyncio also hands that one number to listen(2), but the kernel's queue of connections not yet
accepted must hold a burst while the loop is busy: past a full queue the kernel answers with SYN
cookies, and a client whose handshake's last ACK was dropped has its next segments fail the
cookie's check, a connection reset instead of an answer (300 clients at once: 28-50 resets of 300).
`QueuedServer` lengthens the queue to LISTEN_QUEUE once uvicorn listens, the accepts a tick kept.
uvicorn's own `--limit-concurrency` counts the same connections but still accepts and keeps the
excess open until its headers arrive (which a stalled client never sends), and answers text/plain.
"""

import asyncio
import json
import logging
import resource
import socket
import time
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server

from service.ops.config import get_ops_settings

logger = logging.getLogger(__name__)

# Descriptors kept for everything but client sockets: model and tokenizer files, tessdata, logs,
# /proc files, pipes. Each connection may hold two: its socket and a spooled upload.
FD_RESERVE = 64
FDS_PER_CONNECTION = 2
# Accept bursts in flight before the cap sees them (accepted, not yet at `connection_made`).
BURSTS_IN_FLIGHT = 4
# A request line and its headers, at most: what h11 buffers between reads.
MAX_HEAD_BYTES = 16 * 1024
# The listen backlog serve.py sets (uvicorn's default is 2048): also the most asyncio accepts a tick.
BACKLOG = 64
# The kernel's queue of connections not yet accepted (listen(2); somaxconn may lower it). Each one
# queued holds what its client sent up to its receive buffer (tcp_rmem's default, 128 KB here):
# 500 queued 2 MB senders held 62 MB of kernel memory, outside the process's RSS (MEMORY.md).
LISTEN_QUEUE = 512
# At the cap, a connection that has not sent a request or kept up with the body rate for this long
# makes room for a new one.
SHED_AFTER_S = 1.0


def connection_cap(max_connections: int, backlog: int = BACKLOG) -> int:
    """MAX_CONNECTIONS, lowered to what the descriptor limit (RLIMIT_NOFILE) leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = soft - FD_RESERVE - BURSTS_IN_FLIGHT * backlog
    return max(1, min(max_connections, room // FDS_PER_CONNECTION))


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (often 1024 -> 1M in containers); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            logger.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, error)
    return soft


class QueuedServer(Server):
    """uvicorn's server with its listening sockets' kernel queue lengthened to LISTEN_QUEUE once it
    listens: asyncio gave listen(2) the backlog, the most it accepts a tick."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):  # none when the port could not be bound
            for listening in server.sockets:
                with listening.dup() as duplicate:  # the same socket; asyncio's wrapper has no listen()
                    duplicate.listen(LISTEN_QUEUE)


def canned(status: int, reason: str, code: str, message: str, **headers: str) -> bytes:
    """A whole response in the project's JSON error shape, written without h11: the request (if
    any) was never parsed, so h11 would refuse to answer it."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json"]
    lines += [f"content-length: {len(body)}", "connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class GuardedH11Protocol(H11Protocol):
    _deadline: asyncio.TimerHandle | None = None
    _rate_check: asyncio.TimerHandle | None = None
    _body_started: float | None = None  # when the current request's body began to arrive
    _body_bytes = 0
    _waiting_since = 0.0  # when the connection began to wait for a request's headers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting_since = time.monotonic()
        settings = get_ops_settings()
        cap = connection_cap(settings.max_connections, self.config.backlog)
        if len(self.connections) > cap and not self._shed_one():
            over_capacity.note(cap)
            transport.write(
                canned(
                    503,
                    "Service Unavailable",
                    "too_many_connections",
                    f"the server holds MAX_CONNECTIONS={cap} connections; retry shortly",
                    retry_after="1",
                )
            )
            transport.close()
            return
        self._arm(settings.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            if self._head_too_long(data):
                self._refuse_head()
                return
            if self._deadline is None:
                self._arm(get_ops_settings().header_timeout_s)  # the next request on a kept-alive connection
        elif self._body_started is not None:
            self._body_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self.conn.our_state is not h11.DONE:
            self._disarm()  # headers complete: the body's time is REQUEST_TIMEOUT_S (ops/timeout.py)
        if self.conn.their_state is h11.SEND_BODY and self._body_started is None:
            self._start_body_clock()
        elif self.conn.their_state is not h11.SEND_BODY and self._body_started is not None:
            self._stop_body_clock()

    def _start_body_clock(self) -> None:
        settings = get_ops_settings()
        if not settings.body_min_rate_kb_s:
            return
        self._body_started, self._body_bytes = time.monotonic(), 0
        self._rate_check = self.loop.call_later(settings.body_rate_grace_s, self._check_rate)

    def _stop_body_clock(self) -> None:
        self._body_started = None
        if self._rate_check is not None:
            self._rate_check.cancel()
            self._rate_check = None

    def _check_rate(self) -> None:
        self._rate_check = None
        if self._body_started is None or self.transport.is_closing():
            return
        if self.conn.their_state is not h11.SEND_BODY or self.conn.our_state is not h11.SEND_RESPONSE:
            self._stop_body_clock()  # the body is in, or answered early: the header deadline has the rest
            return
        settings = get_ops_settings()
        if self.flow.read_paused:  # the app has not taken what arrived: the wait is ours, not the client's
            self._body_started += settings.body_rate_grace_s
            self._rate_check = self.loop.call_later(settings.body_rate_grace_s, self._check_rate)
            return
        now = time.monotonic()
        rate = settings.body_min_rate_kb_s * 1024
        due = self._body_started + settings.body_rate_grace_s + self._body_bytes / rate
        if now < due:
            self._rate_check = self.loop.call_later(due - now, self._check_rate)
            return
        self._close_slow_body()

    def _close_slow_body(self) -> None:
        settings = get_ops_settings()
        self._stop_body_clock()
        self.transport.write(
            canned(
                408,
                "Request Timeout",
                "request_timeout",
                f"the request body arrived slower than BODY_MIN_RATE_KB_S={settings.body_min_rate_kb_s:g} "
                f"(after BODY_RATE_GRACE_S={settings.body_rate_grace_s:g} s)",
            )
        )
        self.transport.close()

    def _wasted_s(self, now: float) -> float:
        """How long this connection has held its slot without use: waiting for a request's headers,
        or with a body behind the minimum rate; 0 while a request is being served."""
        if self.transport.is_closing() or self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return 0.0
        if self.conn.their_state is h11.IDLE:
            return now - self._waiting_since
        if self._body_started is None or self.conn.their_state is not h11.SEND_BODY or self.flow.read_paused:
            return 0.0
        return now - self._body_started - self._body_bytes / (get_ops_settings().body_min_rate_kb_s * 1024)

    def _shed_one(self) -> bool:
        """Close the connection that has wasted its slot longest (at least SHED_AFTER_S), to make
        room for this new one; False when there is none."""
        now = time.monotonic()
        others = (c for c in self.connections if isinstance(c, GuardedH11Protocol) and c is not self)
        wasted, victim = max(((c._wasted_s(now), c) for c in others), default=(0.0, None), key=lambda p: p[0])
        if victim is None or wasted < SHED_AFTER_S:
            return False
        over_capacity.shed += 1
        if victim.conn.their_state is h11.SEND_BODY:
            victim._close_slow_body()
            return True
        victim._disarm()
        victim.transport.write(
            canned(
                408,
                "Request Timeout",
                "request_timeout",
                f"no request arrived on this connection for {wasted:.0f} s; it was closed to make room "
                "for another (MAX_CONNECTIONS)",
            )
        )
        victim.transport.close()
        return True

    def _head_too_long(self, data: bytes) -> bool:
        """Whether the head being received (what h11 holds plus `data`, up to the blank line that
        ends it) is over MAX_HEAD_BYTES."""
        end = data.find(b"\r\n\r\n")
        return len(self.conn.trailing_data[0]) + (len(data) if end < 0 else end) > MAX_HEAD_BYTES

    def _refuse_head(self) -> None:
        self._disarm()
        self.transport.write(
            canned(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request line and headers are longer than {MAX_HEAD_BYTES // 1024} KB",
            )
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (bad syntax, headers over 16 KB): uvicorn answers text/plain;
        every other error of the API is JSON."""
        self.transport.write(
            canned(
                400,
                "Bad Request",
                "invalid_http",
                "the request is not valid HTTP/1.1, or its headers are longer than 16 KB",
            )
        )
        self.transport.close()

    def on_response_complete(self) -> None:
        self._stop_body_clock()
        self._waiting_since = time.monotonic()
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._arm(get_ops_settings().header_timeout_s)  # answered early: the unread rest, quickly

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_body_clock()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:  # nothing answered yet: say why it is closed
            self.transport.write(
                canned(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"the request's headers did not arrive within HEADER_TIMEOUT_S={seconds:g} s",
                )
            )
        self.transport.close()


class _OverCapacity:
    """Logs refused connections once a minute with a count, not one line each."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self.refused = 0
        self.shed = 0  # connections closed to make room for a new one
        self._last_log = -every_s

    def note(self, cap: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_log >= self.every_s:
            self._last_log = now
            logger.warning(
                "connections: %d refused so far at the cap of %d open connections (MAX_CONNECTIONS), "
                "%d idle or too slow closed to make room",
                self.refused,
                cap,
                self.shed,
            )


over_capacity = _OverCapacity()


# Messages a hostile client can make the server log once per connection or per failed accept.
FLOOD_MESSAGES = ("socket.accept() out of system resource", "Invalid HTTP request received.")


class RepeatedErrorFilter(logging.Filter):
    """Lets a message that starts with one of `prefixes` through once per `every_s`, with how many
    of it were dropped meanwhile: asyncio logs `socket.accept() out of system resource` at every
    failed accept (hundreds of thousands of lines while descriptors are exhausted), uvicorn
    `Invalid HTTP request received.` for every malformed request. Other messages pass."""

    def __init__(
        self,
        prefixes: tuple[str, ...] = FLOOD_MESSAGES,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.every_s = every_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # template -> (last let through, dropped since)

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if not template.startswith(self.prefixes):
            return True
        now = self._clock()
        last, dropped = self._seen.get(template, (None, 0))
        if last is not None and now - last < self.every_s:
            self._seen[template] = (last, dropped + 1)
            return False
        if len(self._seen) > 1000:  # asyncio's message names the socket: a bounded few
            self._seen.clear()
        self._seen[template] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this in the last {now - last:.0f} s not logged)"
        return True
