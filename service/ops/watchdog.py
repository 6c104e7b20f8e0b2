"""Memory watchdog: a thread that samples memory about once a second and acts on two limits.

What it samples is memory that cannot be reclaimed (`service.budget.unreclaimable_mb`: anonymous
memory, the process's or its cgroup's), not RSS: mapped weights are file pages the kernel reclaims
by itself, and what grows unnoticed (fragmentation, a leak) is anonymous.

The registry keeps loads and reserved work under the budget, but nothing else stops memory that
creeps up: heap fragmentation, caches, a leak in a native library. The watchdog does.
- Soft limit (MEMORY_SOFT_LIMIT of the budget): `gc.collect()`, `malloc_trim`, then unload
  models idle for a while, least recently used first, until under it again. At most every few
  seconds, so a process that stays above it does not spend its CPU collecting.
- Hard limit (MEMORY_HARD_LIMIT): new work is refused with 503 + Retry-After (see
  `ops/admission.py`) until cleanup brings RSS halfway back to the soft limit. With
  RECYCLE_ON_HARD_LIMIT, once nothing is in flight and a last cleanup did not help, the worker
  sends itself SIGTERM: uvicorn shuts down gracefully and the supervisor (start.sh) starts a
  fresh one, which is what `--max-requests` recycling would do, but only when it is needed.
"""

import gc
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service import events, runtime
from service.budget import unreclaimable_mb
from service.ops.config import get_ops_settings
from service.registry import get_registry

logger = logging.getLogger(__name__)

# Seconds between two cleanups: gc.collect() of a process holding torch or onnxruntime objects
# takes tens of ms, and a cleanup that could not get under the soft limit will not soon either.
CLEANUP_COOLDOWN_S = 5.0
# A model used in the last MIN_IDLE_S is not unloaded by the watchdog: reloading it would cost
# more than it frees (the registry still unloads it when a load needs the room).
MIN_IDLE_S = 30.0
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Limits:
    budget_mb: float
    soft_mb: float
    hard_mb: float

    @property
    def resume_mb(self) -> float:
        """Work is admitted again below this: halfway between the limits, so it does not flap."""
        return (self.soft_mb + self.hard_mb) / 2


def sigterm_self() -> None:
    """Ask uvicorn for the graceful shutdown it does on a deploy's SIGTERM."""
    os.kill(os.getpid(), signal.SIGTERM)


class Watchdog:
    def __init__(
        self,
        limits: Limits,
        *,
        evict_idle: Callable[[float, float], list[str]],
        used: Callable[[], float] = unreclaimable_mb,
        recycle: Callable[[], None] | None = None,
        min_uptime_s: float = 60.0,
        interval_s: float = 1.0,
        cleanup_cooldown_s: float = CLEANUP_COOLDOWN_S,
        min_idle_s: float = MIN_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._evict_idle = evict_idle
        self._used = used
        self._recycle = recycle
        self.min_uptime_s = min_uptime_s
        self.interval_s = interval_s
        self.cleanup_cooldown_s = cleanup_cooldown_s
        self.min_idle_s = min_idle_s
        self._clock = clock
        self.started_at = clock()
        self._last_cleanup = -math.inf
        self._lock = threading.Lock()
        self._in_flight = 0
        self.refusing = False
        self.recycling = False
        self.used_mb = 0.0
        self.counters = {"cleanups": 0, "evictions": 0, "refused": 0, "recycles": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Admission: the middleware asks before each request that does work.
    def admit(self) -> bool:
        with self._lock:
            if self.refusing:
                self.counters["refused"] += 1
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def check(self) -> None:
        """One sample and what it calls for; the thread runs this every `interval_s`."""
        now = self._clock()
        used = self._used()
        may_recycle = self._recycle is not None and now - self.started_at >= self.min_uptime_s
        idle_and_stuck = self.refusing and may_recycle and self.in_flight == 0 and not self.recycling
        if used >= self.limits.soft_mb and (
            now - self._last_cleanup >= self.cleanup_cooldown_s or idle_and_stuck
        ):
            used = self._cleanup(used, now)
        self.used_mb = used
        if used >= self.limits.hard_mb and not self.refusing:
            self.refusing = True
            events.emit("watchdog", "over the hard limit: refusing new work", used)
            logger.warning(
                "memory watchdog: memory %.0f MB is over the hard limit %.0f MB; refusing new work",
                used,
                self.limits.hard_mb,
            )
        elif self.refusing and not self.recycling and used < self.limits.resume_mb:
            self.refusing = False
            events.emit("watchdog", "back under the resume level: admitting work", used)
            logger.warning(
                "memory watchdog: memory %.0f MB is back under %.0f MB; admitting work",
                used,
                self.limits.resume_mb,
            )
        if self.refusing and idle_and_stuck and self._recycle is not None:
            self.recycling = True
            self.counters["recycles"] += 1
            events.emit("recycle", "memory stays over the hard limit with nothing in flight", used)
            logger.warning(
                "memory watchdog: memory %.0f MB stays over the hard limit with nothing in flight; recycling",
                used,
            )
            self._recycle()

    def _cleanup(self, used: float, now: float) -> float:
        self._last_cleanup = now
        self.counters["cleanups"] += 1
        gc.collect()
        runtime.trim_heap()
        after = self._used()
        evicted = (
            self._evict_idle(self.limits.soft_mb, self.min_idle_s) if after >= self.limits.soft_mb else []
        )
        if evicted:
            self.counters["evictions"] += len(evicted)
            after = self._used()
        unloaded = f": unloaded {', '.join(evicted)}" if evicted else ""
        events.emit("watchdog", f"cleanup over the soft limit{unloaded}", after)
        logger.warning(
            "memory watchdog: memory %.0f MB over the soft limit %.0f MB; gc, malloc_trim%s -> %.0f MB",
            used,
            self.limits.soft_mb,
            f", unloaded {', '.join(evicted)}" if evicted else "",
            after,
        )
        return after

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memory-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a failed sample must not end the thread that guards memory
                logger.exception("memory watchdog: check failed")


_current: Watchdog | None = None


def current_watchdog() -> Watchdog | None:
    return _current


def start_watchdog() -> Watchdog | None:
    """Start the process's watchdog from the settings (called in the app's lifespan)."""
    global _current
    stop_watchdog()
    settings = get_ops_settings()
    if not settings.memory_watchdog:
        return None
    registry = get_registry()
    limit = registry.budget.limit_mb
    _current = Watchdog(
        Limits(limit, limit * settings.memory_soft_limit, limit * settings.memory_hard_limit),
        evict_idle=registry.evict_idle,
        recycle=sigterm_self if settings.recycle_on_hard_limit else None,
        min_uptime_s=settings.recycle_min_uptime_s,
        interval_s=settings.watchdog_interval_s,
    )
    _current.check()
    _current.start()
    return _current


def stop_watchdog() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
