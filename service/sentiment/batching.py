"""Micro-batching: concurrent `/analyze` requests for one model share one inference call.

On a 0.1-CPU instance every model call pays a fixed cost and every padded token costs compute, so
requests that arrive together are run together. Each request preprocesses in its own thread, or on
the event loop (`analyze_async`; a text that preprocessing empties stays that request's own 422),
then queues its preprocessed texts for the model's one worker thread. The worker takes what has
queued and, when company is likely (other requests are preprocessing, or the last batch held
several), waits for more: at most BATCH_MAX_WAIT_MS after the first arrived, up to BATCH_MAX_SIZE
texts. A lone client never waits.
Each caller gets exactly its own predictions. The queue is bounded in texts: when it is full,
`/analyze` answers 503 + Retry-After at once instead of letting memory and latency grow.

`infer` is the one place around the model call, with batching on or off and for bulk analysis: it
computes identical texts once (and none the result cache holds), sorts texts by length and cuts
them into calls that waste little padding, admits each call's working memory through the registry,
and when a call fails for memory (or would pass the budget) splits it in halves, down to single texts.
"""

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.exceptions import OverBudget, Overloaded, TooLarge
from service.hardware import WORK_MB_FIXED, WORK_MB_PER_TEXT, HardwareConfig
from service.monitoring.metrics import observe_batch, set_queue_depth_source
from service.registry import Loadable, Registry
from service.sentiment.analyzer import Analyzer
from service.sentiment.cache import active_cache
from service.sentiment.schemas import Prediction

logger = logging.getLogger(__name__)

MAX_TOKENS = 128  # every backend truncates to pysentimiento's 128 tokens
CHARS_PER_TOKEN = 4  # tweets, BPE or WordPiece: ~4 characters per token
# A model call's fixed cost, counted in padded tokens: it keeps runs of similar lengths together
# rather than one call per length.
CALL_OVERHEAD_TOKENS = 16
# onnxruntime raises RuntimeException with these texts when an allocation fails (CPU or CUDA arena).
ORT_ALLOCATION_FAILURES = ("Failed to allocate", "bad_alloc")
TORCH_ALLOCATION_FAILURE = "DefaultCPUAllocator: can't allocate memory"


def estimated_tokens(text: str) -> int:
    """Tokens a text pads to, from its length: tokenizing twice would cost more than it saves."""
    return min(MAX_TOKENS, 2 + len(text) // CHARS_PER_TOKEN)


def work_mb(texts: Sequence[str]) -> float:
    """Working memory of one model call: every text padded to the longest."""
    return WORK_MB_FIXED + WORK_MB_PER_TEXT * len(texts) * max(map(estimated_tokens, texts)) / MAX_TOKENS


def buckets(lengths: Sequence[int], max_size: int) -> list[range]:
    """Cut ascending lengths into consecutive runs of at most `max_size` that minimise the padded
    tokens computed plus a fixed cost per call (dynamic programming over a few dozen texts)."""
    cost = [0.0] + [math.inf] * len(lengths)
    run_start = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - max_size), end):
            candidate = cost[start] + CALL_OVERHEAD_TOKENS + (end - start) * lengths[end - 1]
            if candidate < cost[end]:
                cost[end], run_start[end] = candidate, start
    runs = []
    end = len(lengths)
    while end > 0:
        runs.append(range(run_start[end], end))
        end = run_start[end]
    return runs[::-1]


def is_allocation_failure(error: Exception) -> bool:
    """A failure that a smaller batch may not have: memory, never bad input or a broken model."""
    if isinstance(error, MemoryError | OverBudget | TooLarge):
        return True
    if type(error).__module__.startswith("onnxruntime"):
        return any(text in str(error) for text in ORT_ALLOCATION_FAILURES)
    return isinstance(error, RuntimeError) and TORCH_ALLOCATION_FAILURE in str(error)


def _call(analyzer: Analyzer, texts: list[str], registry: Registry, wait: bool = True) -> list[Prediction]:
    """One model call under a working-memory reservation; on a memory failure, its two halves,
    which take what fits now: the batch already waited its turn for memory once."""
    try:
        with registry.reserve(work_mb(texts), f"a batch of {len(texts)} texts", on=analyzer.key, wait=wait):
            observe_batch(len(texts))
            return analyzer.predict_preprocessed(texts)
    except Exception as error:
        if len(texts) == 1 or not is_allocation_failure(error):
            raise
        logger.warning("splitting a batch of %d texts after %s: %s", len(texts), type(error).__name__, error)
    registry.count("batch_splits")
    half = len(texts) // 2
    return _call(analyzer, texts[:half], registry, wait=False) + _call(
        analyzer, texts[half:], registry, wait=False
    )


def infer(analyzer: Analyzer, texts: Sequence[str], registry: Registry, max_size: int) -> list[Prediction]:
    """Predictions for preprocessed texts, in their order, in calls of at most `max_size` texts.

    Identical texts are computed once, and texts the result cache holds not at all: the model
    gives a text the same answer in any batch, so a copy's answer is the text's answer.
    """
    unique = list(dict.fromkeys(texts))
    cache = active_cache()
    known = cache.get_many(analyzer.identity, unique) if cache is not None else {}
    todo = [text for text in unique if text not in known]
    lengths = [estimated_tokens(text) for text in todo]
    order = sorted(range(len(todo)), key=lengths.__getitem__)
    computed: dict[str, Prediction] = {}
    for run in buckets([lengths[i] for i in order], max_size):
        batch = [todo[order[i]] for i in run]
        computed.update(zip(batch, _call(analyzer, batch, registry), strict=True))
    if cache is not None:
        cache.put_many(analyzer.identity, computed)
    if len(unique) < len(texts):
        registry.count("duplicate_texts", len(texts) - len(unique))
    return [known.get(text) or computed[text] for text in texts]


@dataclass
class _Job:
    texts: list[str]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """One model's bounded queue and the worker thread that drains it into model calls.

    The worker starts with the first request and exits when stopped (its model unloaded, the app
    shutting down) once the queue is empty; a later request starts a new one.
    """

    def __init__(
        self, item: Loadable, registry: Registry, max_size: int, max_wait_s: float, queue_max: int
    ) -> None:
        self.item = item
        self.registry = registry
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.queue_max = queue_max
        self._queue: deque[_Job] = deque()
        self._queued = 0  # texts in the queue
        self._preparing = 0  # callers announced but not yet queued: a batch may wait for them
        self._last_requests = 0  # requests in the last batch: more than one means others are coming
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self.counters = {"requests": 0, "texts": 0, "batches": 0, "largest_batch": 0, "rejected": 0}

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> bool:
        return self._worker is not None

    def announce(self) -> None:
        """A caller is preprocessing and will submit (or withdraw) soon."""
        with self._cond:
            self._preparing += 1

    def withdraw(self) -> None:
        with self._cond:
            self._preparing -= 1
            self._cond.notify()

    def submit(self, texts: Sequence[str], announced: bool = False) -> Future:
        """Queue preprocessed texts; the future resolves to their predictions, in order."""
        job = _Job(list(texts))
        with self._cond:
            if announced:
                self._preparing -= 1
                self._cond.notify()
            if self._closed:
                raise Overloaded("the service is shutting down; retry shortly")
            # An empty queue takes any request, so one larger than the bound is still served.
            if self._queued and self._queued + len(job.texts) > self.queue_max:
                self.counters["rejected"] += 1
                raise Overloaded(
                    f"the {self.item.key} model has {self._queued} texts waiting, at most "
                    f"QUEUE_MAX={self.queue_max}; retry shortly",
                    queued=self._queued,
                    queue_max=self.queue_max,
                )
            self._queue.append(job)
            self._queued += len(job.texts)
            self.counters["requests"] += 1
            self._stopping = False
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name=f"batcher {self.item.key}", daemon=True
                )
                self._worker.start()
            self._cond.notify()
        return job.future

    def stop(self, final: bool = False) -> threading.Thread | None:
        """Let the worker exit once the queue is empty; returns it, to join. A later request
        starts a new worker, unless the stop is final (the app shutting down)."""
        with self._cond:
            self._stopping = True
            self._closed = self._closed or final
            self._cond.notify_all()
            return self._worker

    def _run(self) -> None:
        while jobs := self._take():
            self._process(jobs)

    def _take(self) -> list[_Job]:
        """The next batch: whole requests, up to max_size texts, taken once it is full, the oldest
        has waited max_wait_s, or no company is expected. Empty when stopped with nothing queued."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    self._worker = None
                    return []
                self._cond.wait()
            deadline = self._queue[0].queued_at + self.max_wait_s
            while (
                self._queued < self.max_size
                and (self._preparing > 0 or self._last_requests > 1)
                and not self._stopping
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs: list[_Job] = []
            size = 0
            while self._queue and (not jobs or size + len(self._queue[0].texts) <= self.max_size):
                jobs.append(self._queue.popleft())
                size += len(jobs[-1].texts)
            self._queued -= size
            self._last_requests = len(jobs)
            return jobs

    def _process(self, jobs: list[_Job]) -> None:
        # A job whose caller gave up (cancelled: its request timed out) is not computed.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        texts = [text for job in jobs for text in job.texts]
        try:
            # Held so the model cannot be unloaded mid-batch (its callers hold it too).
            with self.registry.use(self.item) as analyzer:
                predictions = infer(analyzer, texts, self.registry, self.max_size)
        except Exception as error:  # every caller of the batch gets it; the worker keeps serving
            for job in jobs:
                job.future.set_exception(error)
            return
        with self._cond:
            self.counters["texts"] += len(texts)
            self.counters["batches"] += 1
            self.counters["largest_batch"] = max(self.counters["largest_batch"], len(texts))
        start = 0
        for job in jobs:
            job.future.set_result(predictions[start : start + len(job.texts)])
            start += len(job.texts)

    def stats(self) -> dict[str, int | float | bool]:
        with self._cond:
            batches = self.counters["batches"]
            mean = self.counters["texts"] / batches if batches else 0.0
            return {
                **self.counters,
                "mean_batch": round(mean, 2),
                "queued": self._queued,
                "running": self.running,
            }


class BatcherPool:
    """The app's batchers, one per model, made on first use; each stops when its model unloads."""

    def __init__(self, config: HardwareConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        registry.unload_listeners.append(self._unloaded)

    def batcher(self, item: Loadable) -> Batcher:
        with self._lock:
            if item.key not in self._batchers:
                self._batchers[item.key] = Batcher(
                    item,
                    self.registry,
                    self.config.batch_max_size,
                    self.config.batch_max_wait_ms / 1000,
                    self.config.queue_max,
                )
            return self._batchers[item.key]

    def _unloaded(self, key: str) -> None:
        with self._lock:
            batcher = self._batchers.get(key)
        if batcher is not None:
            batcher.stop()

    def queued(self) -> int:
        with self._lock:
            return sum(batcher.queued for batcher in self._batchers.values())

    def stats(self) -> dict[str, dict[str, int | float | bool]]:
        with self._lock:
            return {key: batcher.stats() for key, batcher in self._batchers.items()}

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop every worker once its queue is served, and wait for them."""
        self.registry.unload_listeners.remove(self._unloaded)
        with self._lock:
            workers = [batcher.stop(final=True) for batcher in self._batchers.values()]
        for worker in workers:
            if worker is not None:
                worker.join(timeout_s)


_pool: BatcherPool | None = None


@contextmanager
def running(config: HardwareConfig, registry: Registry) -> Iterator[BatcherPool | None]:
    """Micro-batching for as long as the app runs; nothing when MICRO_BATCHING is off."""
    global _pool
    if not config.micro_batching:
        yield None
        return
    pool = _pool = BatcherPool(config, registry)
    set_queue_depth_source(queued_texts)  # not the pool itself: it would outlive the app
    try:
        yield pool
    finally:
        if _pool is pool:
            _pool = None
        pool.close()


def active_pool() -> BatcherPool | None:
    return _pool


def queued_texts() -> int:
    """Texts waiting in the running app's queues (the queue-depth metric)."""
    pool = _pool
    return pool.queued() if pool is not None else 0


async def analyze_async(batcher: Batcher, analyzer: Analyzer, texts: Sequence[str]) -> list[Prediction]:
    """`analyze` on the event loop, with micro-batching on: the request's texts are preprocessed
    here (microseconds a text) and the request awaits its batch without holding a pool thread.
    Cancelled (a timeout), its texts are dropped unless their batch has started."""
    return await asyncio.wrap_future(batcher.submit(analyzer.preprocess(texts)))


def analyze(
    item: Loadable, analyzer: Analyzer, texts: Sequence[str], registry: Registry, max_size: int
) -> list[Prediction]:
    """Predictions for one request's raw texts, preprocessed in the caller's thread (BadInput for a
    text that comes out empty), inferred by the model's batcher when micro-batching runs, else
    in the caller's thread too."""
    pool = _pool
    if pool is None:
        return infer(analyzer, analyzer.preprocess(texts), registry, max_size)
    batcher = pool.batcher(item)
    batcher.announce()
    try:
        processed = analyzer.preprocess(texts)
    except BaseException:
        batcher.withdraw()
        raise
    return batcher.submit(processed, announced=True).result()
