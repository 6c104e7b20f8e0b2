"""What the app sets up at startup and undoes at shutdown, for main.py's lifespan: the hardware
config (detected and logged once), the micro-batching workers that it sizes and the result cache,
and the default model's load in the background (`warm_up`), with the start's timeline in the log."""

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service import hardware, runtime
from service.config import get_settings
from service.hardware import HardwareConfig
from service.registry import get_registry
from service.sentiment import batching, cache
from service.sentiment.service import model_item

logger = logging.getLogger("uvicorn.error")  # INFO shows under uvicorn


def wake_log(step: str) -> None:
    """One line of the start's timeline: this process's CPU seconds and its age at `step`."""
    age = ""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = f", {uptime - started / os.sysconf('SC_CLK_TCK'):.1f} s after it started"
    except (OSError, ValueError, IndexError):  # no /proc
        pass
    logger.info("wake: %s at %.2f s of this process's CPU%s", step, time.process_time(), age)


def warm_up() -> None:
    """Load the default model in a daemon thread: the port opens meanwhile (/health answers), and
    a request that arrives before it is loaded waits for this load (the registry's, bounded by
    ADMISSION_WAIT_S) instead of failing or starting another."""

    def run() -> None:
        try:
            check_budget()
            settings = get_settings()
            try:
                with get_registry().use(model_item(settings.default_task, settings.default_lang)) as analyzer:
                    wake_log(f"the default model {settings.default_task}:{settings.default_lang} loaded")
            except Exception as error:  # the requests that need it get the reason in their 503
                logger.warning("warm-up: the default model did not load: %s", error)
                return
        finally:
            runtime.resume_gc()  # paused by the server command (serve.py) until the model is in
        answered = getattr(analyzer.model, "answered", None)
        del analyzer  # an evicted model is not kept alive by this wait
        if answered is not None:
            answered.wait()
            wake_log("its first answer")

    threading.Thread(target=run, name="warm-up", daemon=True).start()


def check_budget() -> None:
    """Say at startup, not at the first request, when the default model cannot leave room for one."""
    settings = get_settings()
    item = model_item(settings.default_task, settings.default_lang)
    get_registry().warn_if_no_room(f"the default model {item.key} (estimated)", item.estimate_mb())


@contextmanager
def throughput() -> Iterator[HardwareConfig]:
    wake_log("the app starts")
    settings = get_settings()
    config = hardware.configure(settings)
    registry = get_registry()
    try:
        with (
            cache.running(settings.result_cache_entries, settings.result_cache_mb, registry),
            batching.running(config, registry),
        ):
            if settings.warm_up:
                warm_up()
            else:
                check_budget()
                runtime.resume_gc()
            yield config
    finally:
        runtime.resume_gc()  # a warm-up that never ran its load
        hardware.reset()
