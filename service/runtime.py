"""Thread and allocator pinning: the one place that runs before any numeric library loads.

`service/__init__.py` calls `pin()`, so importing anything from `service` pins first. Numeric
libraries read these variables once, when they are imported; setting them later does nothing.
On a 0.1-CPU Render instance or 2 shared cores, more threads than cores is much slower, not
faster (measured: 2 threads made ORT 2x and torch 10x slower here).
"""

import ctypes
import gc
import os
import threading

# glibc mallopt() parameter numbers.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks of 1 MB and more are mmapped and unmapped when freed. glibc's default threshold rises
# with every large block freed (up to 32 MB), after which model activations land in the heap and
# stay there instead of going back when a call ends (MEMORY.md, "Working memory").
MMAP_THRESHOLD_BYTES = 1 << 20
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# Everything `pin()` sets; a process that inherits all of them (the OCR worker) has nothing to decide.
_PINNED_VARS = (
    *_THREAD_VARS,
    "TOKENIZERS_PARALLELISM",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "CUDA_VISIBLE_DEVICES",
)
_libc = None
_gc_paused = False


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        # The symbols already loaded, libc's among them: `ctypes.util.find_library` would run
        # `ldconfig -p` in a child process, CPU that a 0.1-CPU start pays before its first answer.
        try:
            _libc = ctypes.CDLL(None)
        except OSError:
            _libc = False
        if _libc is not False and not hasattr(_libc, "malloc_trim"):
            _libc = False  # musl or another libc: nothing to tune
    return _libc or None


def pin() -> None:
    """Pin thread pools and the allocator from the settings; existing env values win.

    Without NUM_THREADS, one thread per core the process may use (service/hardware.py). When the
    environment already holds every value (a child of the server, such as the OCR worker), the
    settings are not read at all: that spares the child the settings stack (~25 MB)."""
    if not all(var in os.environ for var in _PINNED_VARS):
        from service.config import get_settings
        from service.hardware import num_threads

        settings = get_settings()
        threads = str(num_threads(settings))
        for var in _THREAD_VARS:
            os.environ.setdefault(var, threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD_BYTES))
        if not settings.use_gpu:
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # glibc reads MALLOC_* at process start; start.sh exports them, and this covers processes
    # started any other way (tests, python -m service.*).
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))
        libc.mallopt(_M_MMAP_THRESHOLD, int(os.environ["MALLOC_MMAP_THRESHOLD_"]))


def trim_heap() -> None:
    """Give freed heap pages back to the kernel (measured: -10 to -75 MB after an ORT load)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def pause_gc(at_most_s: float = 300.0) -> None:
    """Turn the cyclic garbage collector off until `resume_gc`, or `at_most_s` seconds if nothing
    calls it (an app without the lifespan that does): the server's start (imports, the default
    model's load) allocates hundreds of thousands of objects, and collecting them as they come
    costs ~0.06 s of CPU at full speed, ~0.6 s of waiting at 0.1 CPU (MEMORY.md, issue 22)."""
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True
        bound = threading.Timer(at_most_s, resume_gc)
        bound.daemon = True
        bound.start()


def resume_gc() -> None:
    """Undo `pause_gc` (nothing if it did not pause): what the start made (modules, the app, the
    model's objects, ~130k) is moved out of every later collection's way, and collection resumes.
    Not collected first: that costs ~0.05 s of CPU, and a start leaves ~800 unreachable objects,
    which stay (measured at RoBERTuito scale, MEMORY.md)."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()
