"""Where models are loaded: lazy singletons that share one memory budget.

Everything heavy (each (task, lang) model, the OCR engine) is a `Loadable`. It is loaded on
first use, never at import or startup, exactly once even when the first requests arrive
together. Before a load the registry checks that used memory plus the item's cost fits the
budget; if not it unloads the least recently used idle items; if that cannot make room yet it waits
a little for items in use and running work to be given back, then refuses with `OverBudget`
rather than letting the kernel's OOM killer end the process.
What is counted is memory that cannot be reclaimed (service/budget.py: anonymous memory, the
process's and its cgroup's), plus, for each item while work runs on it, an allowance for the
file-backed pages that work reads (a prepacked model's mapped weights, measured at its load):
idle items' file pages are left to the kernel to drop and re-read. Work short of room by less
than the running calls' allowances waits for those calls to end instead of unloading idle items
(which would be reloaded, their weights re-read, at their next request). An item's cost is the
unreclaimable memory it added when it loaded, remembered for reloads; before its first load its
`estimate_mb()` (from file sizes) stands in. The rule and its measurements: MEMORY.md, issue 11.
"""

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from service import events, runtime
from service.budget import Budget, detect_budget, unreclaimable_mb
from service.config import get_settings
from service.exceptions import OverBudget, TooLarge
from service.hardware import WORK_MB_FIXED
from service.ingress import LEDGER

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Retry-After when nothing could make room: only a change elsewhere (an idle model unloaded by
# the watchdog, another model's requests ending) can help, so not a retry loop of seconds.
HOPELESS_RETRY_AFTER_S = 30


@dataclass
class Loadable:
    key: str
    load: Callable[[], Any]
    estimate_mb: Callable[[], float]
    describe: Callable[[], dict[str, Any]] = dict
    # Raises when the item cannot load at all (a missing dir), before any room is made for it.
    check: Callable[[], None] = lambda: None
    # The file-backed MB one call of the loaded value reads (its allowance while work runs on it).
    file_mb: Callable[[Any], float] = lambda value: 0.0


@dataclass
class _Entry:
    key: str
    value: Any
    cost_mb: float
    loaded_at: float
    details: dict[str, Any]
    last_used: float = field(default_factory=time.time)
    in_use: int = 0
    file_mb: float = 0.0
    running: int = 0  # admitted work (reservations) running on it now
    reserved_mb: float = 0.0  # the working memory that work reserved


class Registry:
    def __init__(
        self,
        budget: Budget,
        used: Callable[[], float] = unreclaimable_mb,
        failure_ttl_s: float = 30.0,
        admission_wait_s: float = 30.0,
        min_work_mb: float = 0.0,
    ) -> None:
        self.budget = budget
        self._used = used
        self._entries: dict[str, _Entry] = {}
        self._measured_cost: dict[str, float] = {}
        self._lock = threading.Lock()  # guards the entries' bookkeeping
        self._load_lock = threading.Lock()  # one load at a time: each sees the last one's RSS
        self._improve_lock = threading.Lock()  # one child making a lighter form at a time
        self.counters = {"loads": 0, "evictions": 0, "refusals": 0, "load_failures": 0, "batch_splits": 0}
        # Called with the key of each item unloaded (a model's batching worker stops with it).
        self.unload_listeners: list[Callable[[str], None]] = []
        # A failed load is answered from memory for a while: an unreachable hub takes ~45 s
        # to fail, and every request retrying it would pile up threads.
        self.failure_ttl_s = failure_ttl_s
        self._failures: dict[str, tuple[float, Exception]] = {}
        self._reserved_mb = 0.0  # working memory admitted to requests still running
        # Work that does not fit while other requests hold memory waits this long (ADMISSION_WAIT_S)
        # for it before it is refused: that memory is coming back, so a 503 would be early.
        self.admission_wait_s = admission_wait_s
        self.min_work_mb = min_work_mb  # the working memory of the smallest request
        self._released = threading.Condition(self._lock)
        self._releases = 0  # counts notifications, so a waiter sees one that came before it waited
        # Callers waiting for room, first come first served: without an order, a stream of small
        # batches would take every MB given back and starve a large OCR request (seen in the soak).
        self._queue: deque[object] = deque()

    @contextmanager
    def use(self, item: Loadable) -> Iterator[Any]:
        """Yield the loaded item; it cannot be evicted while a caller holds it."""
        entry = self._acquire(item)
        try:
            yield entry.value
        finally:
            self._release([entry])

    @contextmanager
    def use_loaded(self, item: Loadable) -> Iterator[Any | None]:
        """`use` for a caller that must not block (the event loop): the item if it is loaded now,
        held likewise, else None at once; nothing is loaded and nothing waits."""
        with self._lock:
            entry = self._entries.get(item.key)
            if entry is not None:
                entry.in_use += 1
        if entry is None:
            yield None
            return
        try:
            yield entry.value
        finally:
            self._release([entry])

    @contextmanager
    def use_all(self, items: Sequence[Loadable], min_work_mb: float = 0.0) -> Iterator[list[Any]]:
        """Yield every item loaded at once (one request needing several models): all or none.

        The request waits in line until the budget holds them all beside `min_work_mb` of work, or
        is refused (503 + Retry-After); it never holds one while it waits for another, so requests
        needing overlapping sets cannot deadlock, and it unloads nothing for a set that cannot fit.
        """
        entries = self._acquire_all(list(items), min_work_mb)
        try:
            yield [entry.value for entry in entries]
        finally:
            self._release(entries)

    def _acquire_all(self, items: list[Loadable], min_work_mb: float) -> list[_Entry]:
        with self._lock:
            present = [self._entries.get(item.key) for item in items]
            if all(entry is not None for entry in present):
                for entry in present:
                    entry.in_use += 1
                return present
        keys = ", ".join(item.key for item in items)
        return self._when_room(
            lambda: self._load_all(items, min_work_mb), f"loading {keys}", None, self.admission_wait_s
        )

    def _load_all(self, items: list[Loadable], min_work_mb: float) -> list[_Entry]:
        """Under the load lock: refuse (OverBudget) before unloading anything when the set cannot
        fit with every idle item outside it unloaded; else load what is missing."""
        wanted = {item.key for item in items}
        with self._lock:
            missing = [item for item in items if item.key not in self._entries]
            idle = [e for e in self._entries.values() if e.in_use == 0 and e.key not in wanted]
            evictable = sum(e.cost_mb for e in idle)
        # What each loaded before costs, and the peak of loading the largest never loaded: loads
        # run one at a time, and a first load's estimate is its peak, not what it keeps.
        known = sum(self._measured_cost[item.key] for item in missing if item.key in self._measured_cost)
        first = max(
            (item.estimate_mb() for item in missing if item.key not in self._measured_cost), default=0.0
        )
        need = known + first + min_work_mb
        short = self.used_mb() - evictable + need - self.budget.usable_mb
        if short > 0:
            raise OverBudget(
                f"loading {', '.join(sorted(wanted))} together needs ~{need:.0f} MB beside what is "
                f"loaded, {short:.0f} MB more than the {self.budget.limit_mb:.0f} MB budget holds",
                needed_mb=round(need, 1),
                short_by_mb=round(short, 1),
            )
        held: list[_Entry] = []
        try:
            for item in items:
                held.append(self._load(item))
        except BaseException:
            self._release(held)
            raise
        return held

    def _release(self, entries: Sequence[_Entry]) -> None:
        with self._lock:
            for entry in entries:
                entry.in_use -= 1
                entry.last_used = time.time()
            self._notify_released()  # they may now be evicted to make room

    def _acquire(self, item: Loadable) -> _Entry:
        with self._lock:
            entry = self._entries.get(item.key)
            if entry is not None:
                entry.in_use += 1
                return entry
        return self._when_room(lambda: self._load(item), f"loading {item.key}", None, self.admission_wait_s)

    def _load(self, item: Loadable) -> _Entry:
        """Load `item` under the load lock, once room is made for it; OverBudget if none can be."""
        with self._lock:
            entry = self._entries.get(item.key)
            if entry is not None:  # another request loaded it while we waited
                entry.in_use += 1
                return entry
        failed = self._failures.get(item.key)
        if failed is not None and time.monotonic() - failed[0] < self.failure_ttl_s:
            raise failed[1]
        item.check()
        cost = self._measured_cost.get(item.key) or item.estimate_mb()
        self._make_room(f"loading {item.key}", cost, item=item.key)
        before = self._used()
        started = time.time()
        try:
            value = item.load()
        except Exception as error:
            self._failures[item.key] = (time.monotonic(), error)
            self.counters["load_failures"] += 1
            events.emit("load_failure", item.key, at=started)
            raise
        self._failures.pop(item.key, None)
        runtime.trim_heap()
        measured = max(self._used() - before, 0.0)
        self._measured_cost[item.key] = measured
        entry = _Entry(
            item.key, value, measured, time.time(), item.describe(), in_use=1, file_mb=item.file_mb(value)
        )
        with self._lock:
            self._entries[item.key] = entry
            self.counters["loads"] += 1
        events.emit("load", f"{item.key} in {time.time() - started:.1f} s", measured, at=started)
        self.warn_if_no_room(f"{item.key} loaded ({measured:.0f} MB)")
        return entry

    def improve(
        self,
        key: str,
        value: Any,
        make: Callable[[], str | None],
        swap: Callable[[], float | None],
        extra_mb: float,
        what: str,
    ) -> bool:
        """Make a lighter form of the loaded item `key` and swap it in, off the request path: `make`
        runs in a child process (None: made; else why not) once its memory fits (the item's cost
        plus `extra_mb`, the budget counting the child while it runs); `swap` replaces the value in
        place, and the item's cost drops by the unreclaimable memory that gave back. The item is
        held meanwhile, so not evicted. False (logged) when it could not be done now; nothing is
        done when `value` is no longer the loaded one (unloaded, or reloaded since).

        One at a time: the room is checked before the child starts and its memory is only
        measured once it grows, so children started together would each see the same room."""
        with self._improve_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or entry.value is not value:
                    return False
                entry.in_use += 1
            started = time.time()
            try:
                try:
                    with self.reserve(entry.cost_mb + extra_mb, what, wait=False):
                        pass  # room now; the child's memory is measured while it runs, not reserved
                except (OverBudget, TooLarge) as refused:
                    entry.details["prepacked"] = f"not now: {refused.message}"
                    logger.warning("%s: not made now: %s", what, refused.message)
                    return False
                failure = make()
                if failure is not None:
                    entry.details["prepacked"] = f"not made: {failure}"
                    logger.warning("%s: not made: %s", what, failure)
                    return False
                with self._load_lock:  # it measures memory: no load beside it
                    before = self._used()
                    file_mb = swap()
                    if file_mb is None:
                        entry.details["prepacked"] = "made, but not usable here"
                        return False
                    gc.collect()
                    runtime.trim_heap()
                    freed = max(before - self._used(), 0.0)
                with self._lock:
                    entry.cost_mb = max(entry.cost_mb - freed, 0.0)
                    self._measured_cost[key] = entry.cost_mb
                    entry.file_mb = file_mb
                    entry.details["prepacked"] = "in place"
                events.emit("load", f"{what} in {time.time() - started:.1f} s", -freed, at=started)
                return True
            finally:
                with self._lock:
                    entry.in_use -= 1
                    entry.last_used = time.time()
                    self._released.notify_all()

    def warn_if_no_room(self, what: str, extra_mb: float = 0.0) -> bool:
        """Log, naming MEMORY_BUDGET_MB, when `what` (plus `extra_mb` to come) leaves no room for
        the smallest request; requests then get the reason in their 503."""
        left = self.budget.usable_mb - self._used() - extra_mb
        if left >= self.min_work_mb:
            return False
        logger.warning(
            "%s leaves %.0f MB of the %.0f MB budget (%s), less than the %.0f MB the smallest request "
            "needs: requests will be refused until MEMORY_BUDGET_MB is raised or fewer/smaller models "
            "are served",
            what,
            left,
            self.budget.limit_mb,
            self.budget.source,
            self.min_work_mb,
        )
        return True

    @contextmanager
    def reserve(self, need_mb: float, what: str, on: str | None = None, wait: bool = True) -> Iterator[None]:
        """Admit work needing `need_mb` of working memory (a batch, an image, PDF pages); while
        any work runs on the item `on`, its file allowance counts as used too.

        Refused before any work starts: 413 if it could never fit the budget, 503 +
        Retry-After if it cannot fit in time, even after unloading idle items. Reservations of
        requests still running count as used, so concurrent requests cannot overbook.
        `on`: the item the work runs on (its model), which waiting cannot free.
        `wait=False`: one try, no waiting in line (the halves of a batch that already waited).
        """
        if need_mb > self.budget.usable_mb:
            with self._lock:
                self._refused(what)
            raise TooLarge(
                f"{what} needs ~{need_mb:.0f} MB of working memory, more than the whole "
                f"{self.budget.usable_mb:.0f} MB usable budget; send less at once",
                needed_mb=round(need_mb, 1),
            )

        entry = self._entries.get(on) if on is not None else None

        def admit() -> None:
            allowance = entry.file_mb if entry is not None and entry.running == 0 else 0.0
            # Short by less than running calls give back when they end (within a call, or an OCR
            # page): wait for them rather than unload idle models (each a reload, and its weights
            # re-read, when its turn comes) to run this work beside them.
            used = self.used_mb()  # one reading of memory per try: it is read for every model call
            short_mb = used + need_mb + allowance - self.budget.usable_mb
            wait_for_running = 0 < short_mb <= self._running_calls_mb()
            self._make_room(what, need_mb + allowance, evict=not wait_for_running, used_mb=used)
            with self._lock:
                self._reserved_mb += need_mb
                if entry is not None:
                    entry.running += 1
                    entry.reserved_mb += need_mb

        self._when_room(admit, what, on, self.admission_wait_s if wait else 0.0)
        try:
            yield
        finally:
            with self._lock:
                self._reserved_mb -= need_mb
                if entry is not None:
                    entry.running -= 1
                    entry.reserved_mb -= need_mb
                self._notify_released()

    def _when_room(self, attempt: Callable[[], T], what: str, on: str | None, wait_s: float) -> T:
        """Run `attempt` under the load lock, in arrival order; while it finds no room (OverBudget)
        but running work or items held by others could give enough back, wait for them, up to
        `wait_s`, then refuse.

        A 503 would be early while memory is on its way back: a batch ends in a fraction of a
        second, and an item in use becomes evictable when its request ends. When nothing that
        could come back would be enough, waiting is pointless: refused at once."""
        deadline = time.monotonic() + wait_s
        turn = object()
        with self._lock:
            self._queue.append(turn)
        try:
            while True:
                with self._lock:
                    while self._queue[0] is not turn:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self._refused(what)
                            raise OverBudget(
                                f"{what} waited {wait_s:.0f} s behind other work for memory; retry shortly",
                                waiting=len(self._queue) - 1,
                            )
                        self._released.wait(timeout=left)
                    seen = self._releases
                try:
                    with self._load_lock:
                        return attempt()
                except OverBudget as refused:
                    with self._lock:
                        if self._releases != seen:  # memory came back while it tried: try again now
                            continue
                        left = deadline - time.monotonic()
                        short = refused.details.get("short_by_mb", 0.0)
                        if short > self._coming_back_mb(on):
                            self._refused(what)
                            raise self._hopeless(what, refused) from None
                        if left <= 0:
                            self._refused(what)
                            raise
                        if short > self._calls_give_back_mb(on):
                            # It waits for items that requests hold, and their calls may be behind
                            # it in line: it lets them go first rather than block them (a deadlock
                            # until the wait ran out, seen with several models per request).
                            self._queue.remove(turn)
                            self._queue.append(turn)
                            self._notify_released()
                        self._released.wait(timeout=left)
        finally:
            with self._lock:
                self._queue.remove(turn)
                self._notify_released()  # the next in line may go

    def _notify_released(self) -> None:
        """Wake whoever waits for memory (the caller holds the lock)."""
        self._releases += 1
        self._released.notify_all()

    def _running_calls_mb(self) -> float:
        """What the calls running on items give back when they end: their working memory and
        their items' file allowances."""
        with self._lock:
            return sum(e.reserved_mb + e.file_mb for e in self._entries.values() if e.running)

    def _calls_give_back_mb(self, on: str | None) -> float:
        """Memory that running calls give back when they end, with no one in line (lock held)."""
        return self._reserved_mb + sum(e.file_mb for e in self._entries.values() if e.key != on and e.running)

    def _coming_back_mb(self, on: str | None) -> float:
        """Memory that running work and items in use by others will give back (lock held)."""
        held_by_others = sum(e.cost_mb for e in self._entries.values() if e.key != on and e.in_use)
        return self._calls_give_back_mb(on) + held_by_others

    def _hopeless(self, what: str, refused: OverBudget) -> OverBudget:
        """The refusal when nothing in flight or idle could make room: say why, and what to change."""
        loaded = ", ".join(f"{e.key} {e.cost_mb:.0f} MB" for e in self._entries.values()) or "nothing"
        return OverBudget(
            f"{refused.message}; nothing running or loaded could give that back (loaded: {loaded}), so "
            f"retrying will not help until other work is unloaded: raise MEMORY_BUDGET_MB (now "
            f"{self.budget.limit_mb:.0f} MB, from {self.budget.source}) or serve fewer or smaller models",
            retry_after_s=HOPELESS_RETRY_AFTER_S,
            **refused.details,
        )

    def _refused(self, what: str) -> None:
        """Count a refusal (the caller holds the lock) and say what was refused."""
        self.counters["refusals"] += 1
        events.emit("refusal", what)

    @property
    def reserved_mb(self) -> float:
        return self._reserved_mb

    @property
    def running_file_mb(self) -> float:
        """The file allowances of the items work is running on now."""
        with self._lock:
            return sum(e.file_mb for e in self._entries.values() if e.running)

    def used_mb(self) -> float:
        """Memory the budget counts as used: unreclaimable memory now, working memory admitted to
        running work, the file pages that work reads, and request bodies declared but not arrived
        yet (service/ingress.py; those that arrived are in the unreclaimable memory)."""
        return self._used() + self._reserved_mb + self.running_file_mb + LEDGER.pending_mb

    def _make_room(
        self, what: str, cost_mb: float, evict: bool = True, used_mb: float | None = None, **details: Any
    ) -> None:
        """Evict LRU idle items (none if not `evict`) until `cost_mb` fits under the budget, or refuse.
        `used_mb`: what the caller has just read (`used_mb()`), so memory is not read twice."""
        while True:
            used = self.used_mb() if used_mb is None else used_mb
            used_mb = None  # read afresh after an unload
            needed = used + cost_mb - self.budget.usable_mb
            if needed <= 0:
                return
            with self._lock:
                idle = [e for e in self._entries.values() if e.in_use == 0 and evict]
            if not idle:
                why = "nothing idle can be unloaded" if evict else "other models' calls hold their weights"
                raise OverBudget(
                    f"{what} needs ~{cost_mb:.0f} MB but only {max(cost_mb - needed, 0):.0f} MB of the "
                    f"{self.budget.limit_mb:.0f} MB budget is free and {why}",
                    needed_mb=round(cost_mb, 1),
                    headroom_mb=round(max(cost_mb - needed, 0), 1),
                    short_by_mb=round(needed, 1),
                    **details,
                )
            self.unload(min(idle, key=lambda e: e.last_used).key)

    def unload(self, key: str) -> float:
        """Drop an idle item and give its memory back; returns the unreclaimable MB freed."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.in_use:
                return 0.0
            del self._entries[key]
            self.counters["evictions"] += 1
        before = self._used()
        close = getattr(entry.value, "close", None)
        if callable(close):
            close()
        del entry
        for listener in list(self.unload_listeners):
            listener(key)
        gc.collect()
        runtime.trim_heap()
        freed = max(before - self._used(), 0.0)
        events.emit("eviction", key, freed)
        return freed

    def evict_idle(self, until_mb: float, min_idle_s: float = 0.0) -> list[str]:
        """Unload items unused for `min_idle_s`, least recently used first, until unreclaimable
        memory is at most `until_mb` (the watchdog's soft limit). Skipped while a load runs: it
        measures memory."""
        if not self._load_lock.acquire(blocking=False):
            return []
        evicted = []
        try:
            while self._used() > until_mb:
                cutoff = time.time() - min_idle_s
                with self._lock:
                    idle = [e for e in self._entries.values() if e.in_use == 0 and e.last_used <= cutoff]
                if not idle:
                    break
                key = min(idle, key=lambda e: e.last_used).key
                self.unload(key)
                evicted.append(key)
        finally:
            self._load_lock.release()
        return evicted

    def count(self, name: str, amount: int = 1) -> None:
        """Add to a counter that /memory shows."""
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def is_loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "key": e.key,
                    "cost_mb": round(e.cost_mb, 1),
                    "file_mb": round(e.file_mb, 1),
                    "running": e.running,
                    "loaded_at": e.loaded_at,
                    "last_used": e.last_used,
                    "in_use": e.in_use,
                    **e.details,
                }
                for e in self._entries.values()
            ]


@lru_cache
def get_registry() -> Registry:
    """The process's one registry, with the budget decided from settings and the cgroup."""
    settings = get_settings()
    budget = detect_budget(settings.memory_budget_mb, settings.memory_margin_mb)
    return Registry(budget, admission_wait_s=settings.admission_wait_s, min_work_mb=WORK_MB_FIXED)
