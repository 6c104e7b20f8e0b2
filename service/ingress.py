"""The ingress ledger: the bytes of request bodies the process holds in memory, all requests together.

One request is bounded by MAX_JSON_BODY_MB; many are not, unless something adds them up: 120
connections each holding all but the last byte of a 2 MB JSON body took 250 MB (issue 21). Every
request gets an `Account` (service/ops/bodylimit.py opens it in the ASGI layer, where the body's
bytes arrive): a body's declared Content-Length is reserved before any of it is read, each byte
that arrives is held until the request ends, and whoever moves bytes out of memory (the form
parser, when it writes a part to disk: service/forms.py) gives them back at once. Past the
ledger's ceiling (INGRESS_MAX_MB) the request that asks for more gets 503 + Retry-After.

What is reserved but has not arrived yet (`pending_mb`) is memory the process has promised: the
registry counts it as used, so admission sees it. What has arrived is already in the process's
anonymous memory, which the registry reads. When many bodies are given back, glibc keeps their
freed pages (~64 KB chunks in the heap, below the mmap threshold); a trim afterwards returns them
to the kernel (measured in MEMORY.md, issue 21).
"""

import threading
from typing import Any

from service import runtime
from service.exceptions import IngressFull

MB = 1024 * 1024
# The key of a request's account in its ASGI scope.
SCOPE_KEY = "service.ingress"
# Bytes given back since the last trim that make the next trim worth its cost (a walk of the heap).
TRIM_AFTER_BYTES = 8 * MB
# A trim waits this long after the last release, so a wave of requests ending is trimmed once.
TRIM_DELAY_S = 0.2
RETRY_AFTER_S = 2
# Each request's first bytes are not counted: a full ledger must not refuse an ordinary request
# (a text to /analyze) while large bodies hold it. Bounded all the same, by the connection cap:
# MAX_CONNECTIONS x FREE_BYTES (500 x 16 KB = 8 MB) beside INGRESS_MAX_MB.
FREE_BYTES = 16 * 1024


class Ledger:
    """Bytes held or reserved for request bodies, under one ceiling; thread-safe."""

    def __init__(self, ceiling_bytes: int = 0) -> None:
        self.ceiling_bytes = ceiling_bytes  # set by the ASGI layer from its settings
        self.charged = 0  # what the accounts count against the ceiling
        self.pending = 0  # reserved, not arrived yet
        self.peak = 0
        self.refusals = 0
        self._released = 0  # given back since the last trim
        self._lock = threading.Lock()
        self._trim: threading.Timer | None = None

    def _change(self, charged: int, pending: int, what: str) -> None:
        """Apply a change; an increase past the ceiling is refused (IngressFull) and not applied."""
        with self._lock:
            if charged > 0 and self.charged + charged > self.ceiling_bytes:
                self.refusals += 1
                raise IngressFull(
                    f"the server holds {self.charged / MB:.1f} MB of request bodies in memory, and "
                    f"{what} would pass INGRESS_MAX_MB={self.ceiling_bytes / MB:g}; retry shortly",
                    retry_after_s=RETRY_AFTER_S,
                    held_mb=round(self.charged / MB, 1),
                    ingress_max_mb=round(self.ceiling_bytes / MB, 3),
                )
            self.charged += charged
            self.pending += pending
            self.peak = max(self.peak, self.charged)
            if charged < 0:
                self._released -= charged
                if self._released >= TRIM_AFTER_BYTES and self._trim is None:
                    self._trim = threading.Timer(TRIM_DELAY_S, self._trim_heap)
                    self._trim.daemon = True
                    self._trim.start()

    def _trim_heap(self) -> None:
        with self._lock:
            self._trim = None
            self._released = 0
        runtime.trim_heap()

    @property
    def pending_mb(self) -> float:
        return self.pending / MB

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "held_mb": round(self.charged / MB, 2),
                "pending_mb": round(self.pending / MB, 2),
                "peak_mb": round(self.peak / MB, 2),
                "ceiling_mb": round(self.ceiling_bytes / MB, 2),
                "refusals": self.refusals,
            }


LEDGER = Ledger()


def _charge(reserved: int, held: int) -> int:
    return max(max(reserved, held) - FREE_BYTES, 0)


class Account:
    """One request's share of the ledger: what it reserved, and what it holds now.

    It counts against the ceiling as the larger of the two (the bytes of a declared body that
    arrive fill its reservation first), less FREE_BYTES."""

    def __init__(self, ledger: Ledger = LEDGER) -> None:
        self.ledger = ledger
        self.reserved = 0
        self.held = 0
        self.closed = False

    def _set(self, reserved: int, held: int, what: str) -> None:
        if self.closed:
            return
        old_charge, old_pending = _charge(self.reserved, self.held), max(self.reserved - self.held, 0)
        new_charge, new_pending = _charge(reserved, held), max(reserved - held, 0)
        self.ledger._change(new_charge - old_charge, new_pending - old_pending, what)
        self.reserved, self.held = reserved, held

    def reserve(self, nbytes: int) -> None:
        """Promise `nbytes` (a declared body) before any of it is read; IngressFull past the ceiling."""
        self._set(nbytes, self.held, f"a body of {nbytes / MB:.2f} MB")

    def take(self, nbytes: int) -> None:
        """`nbytes` more are held in memory; IngressFull past the ceiling (they are then not counted)."""
        self._set(self.reserved, self.held + nbytes, f"{nbytes / 1024:.0f} KB more")

    def give(self, nbytes: int) -> None:
        """`nbytes` held are no longer in memory (written to disk, dropped)."""
        self._set(self.reserved, max(self.held - nbytes, 0), "")

    def close(self) -> None:
        """The request ended: everything it held or reserved goes back."""
        self._set(0, 0, "")
        self.closed = True


def account_of(scope: dict[str, Any]) -> Account | None:
    """The request's account, when the ASGI layer opened one (not in a bare app under test)."""
    return scope.get(SCOPE_KEY)
