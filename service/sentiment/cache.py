"""A bounded cache of recent predictions, for texts that come back (retweets, a dataset scored again).

Keyed by the loaded model's identity and the preprocessed text, so a reloaded or re-exported model
never answers from another model's results, and what a model cached is dropped when it unloads.
Bounded in entries (RESULT_CACHE_ENTRIES; 0, the default, turns it off) and in bytes
(RESULT_CACHE_MB): the bytes bound is reserved in the registry for as long as the app runs, so the
memory budget counts the cache as used before it fills. A cached answer is the answer the model
gives that text in any batch: the default INT8 export is batch-invariant (docs/int8-recipes.md).
"""

import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from service.registry import Registry
from service.sentiment.schemas import Prediction

# What an entry costs beyond its text's str object: the key tuple, the OrderedDict node and the
# Prediction (a pydantic model holding a label and a dict of 3 floats). Measured with
# tracemalloc over 10,000 entries of 3-label predictions: 819 bytes; counted as 1 KiB.
ENTRY_OVERHEAD_BYTES = 1024
MB = 1024 * 1024


class ResultCache:
    """Least recently used first out; thread-safe (the batch worker, bulk streams and request
    threads all use it)."""

    def __init__(self, max_entries: int, max_mb: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = int(max_mb * MB)
        self._entries: OrderedDict[tuple[str, str], Prediction] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.counters = {"hits": 0, "misses": 0, "evictions": 0}

    @staticmethod
    def _size(text: str) -> int:
        return sys.getsizeof(text) + ENTRY_OVERHEAD_BYTES

    def get_many(self, model: str, texts: Iterable[str]) -> dict[str, Prediction]:
        """The cached predictions of `model` among `texts` (distinct), each marked recently used."""
        found = {}
        with self._lock:
            for text in texts:
                prediction = self._entries.get((model, text))
                if prediction is None:
                    self.counters["misses"] += 1
                    continue
                self._entries.move_to_end((model, text))
                self.counters["hits"] += 1
                found[text] = prediction
        return found

    def put_many(self, model: str, predictions: Mapping[str, Prediction]) -> None:
        with self._lock:
            for text, prediction in predictions.items():
                key = (model, text)
                if key in self._entries:
                    self._entries.move_to_end(key)
                    continue
                size = self._size(text)
                if size > self.max_bytes:
                    continue
                self._entries[key] = prediction
                self._bytes += size
                while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                    (_, old), _ = self._entries.popitem(last=False)
                    self._bytes -= self._size(old)
                    self.counters["evictions"] += 1

    def drop(self, model_prefix: str) -> None:
        """Forget every entry of the models whose identity starts with `model_prefix`."""
        with self._lock:
            for key in [key for key in self._entries if key[0].startswith(model_prefix)]:
                self._bytes -= self._size(key[1])
                del self._entries[key]

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            lookups = self.counters["hits"] + self.counters["misses"]
            return {
                **self.counters,
                "hit_rate": round(self.counters["hits"] / lookups, 4) if lookups else 0.0,
                "entries": len(self._entries),
                "max_entries": self.max_entries,
                "mb": round(self._bytes / MB, 3),
                "max_mb": round(self.max_bytes / MB, 3),
            }


_cache: ResultCache | None = None


@contextmanager
def running(max_entries: int, max_mb: float, registry: Registry) -> Iterator[ResultCache | None]:
    """The app's cache for as long as it runs, its bytes bound reserved in the budget; nothing
    when RESULT_CACHE_ENTRIES is 0."""
    global _cache
    if max_entries <= 0:
        yield None
        return
    with registry.reserve(max_mb, "the result cache (RESULT_CACHE_MB)"):
        cache = _cache = ResultCache(max_entries, max_mb)

        def forget(key: str) -> None:  # an unloaded model's results go with it
            cache.drop(f"{key}#")

        registry.unload_listeners.append(forget)
        try:
            yield cache
        finally:
            registry.unload_listeners.remove(forget)
            if _cache is cache:
                _cache = None


def active_cache() -> ResultCache | None:
    return _cache
