"""What the app sets up at startup and undoes at shutdown, for main.py's lifespan: the hardware
config (detected and logged once) and the micro-batching workers that it sizes."""

from collections.abc import Iterator
from contextlib import contextmanager

from service import hardware
from service.config import get_settings
from service.hardware import HardwareConfig
from service.registry import get_registry
from service.sentiment import batching


@contextmanager
def throughput() -> Iterator[HardwareConfig]:
    config = hardware.configure(get_settings())
    try:
        with batching.running(config, get_registry()):
            yield config
    finally:
        hardware.reset()
