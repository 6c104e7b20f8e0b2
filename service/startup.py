"""What the app sets up at startup and undoes at shutdown, for main.py's lifespan: the hardware
config (detected and logged once), the micro-batching workers that it sizes and the result cache."""

from collections.abc import Iterator
from contextlib import contextmanager

from service import hardware
from service.config import get_settings
from service.hardware import HardwareConfig
from service.registry import get_registry
from service.sentiment import batching, cache
from service.sentiment.service import model_item


def check_budget() -> None:
    """Say at startup, not at the first request, when the default model cannot leave room for one."""
    settings = get_settings()
    item = model_item(settings.default_task, settings.default_lang)
    get_registry().warn_if_no_room(f"the default model {item.key} (estimated)", item.estimate_mb())


@contextmanager
def throughput() -> Iterator[HardwareConfig]:
    check_budget()
    settings = get_settings()
    config = hardware.configure(settings)
    registry = get_registry()
    try:
        with (
            cache.running(settings.result_cache_entries, settings.result_cache_mb, registry),
            batching.running(config, registry),
        ):
            yield config
    finally:
        hardware.reset()
