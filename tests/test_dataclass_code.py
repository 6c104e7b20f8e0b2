"""The dataclass methods' code recorded by the build: used at start, the same classes as compiled
ones, and ignored when missing, from another Python or corrupt."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.wake import start_env
from service import dataclass_code
from tests.support import ROOT

MODULE = '''
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    """A frozen dataclass with a default factory."""

    x: int
    y: int = 0
    tags: tuple[str, ...] = field(default_factory=tuple)
'''


@pytest.fixture
def fresh(monkeypatch, tmp_path: Path):
    """This process's dataclasses module as it was, an empty table, and a module to define classes in."""
    monkeypatch.setattr(dataclasses, "exec", exec, raising=False)
    monkeypatch.setattr(dataclass_code, "_codes", {})
    monkeypatch.setattr(dataclass_code, "stats", {"found": 0, "compiled": 0})
    (tmp_path / "points.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "points", raising=False)
    return tmp_path


def define_points() -> type:
    sys.modules.pop("points", None)
    import points  # defined anew at each call

    return points.Point


def test_recorded_code_is_found_and_makes_the_same_class(fresh: Path) -> None:
    cache = fresh / "code.marshal"
    assert dataclass_code.record(["points"], cache) >= 4  # __init__, __repr__, __eq__, __hash__, ...
    compiled = dict(dataclass_code.stats)
    assert compiled["compiled"] >= 4 and cache.is_file()

    dataclass_code._codes.clear()
    dataclass_code.stats.update(found=0, compiled=0)
    assert dataclass_code.install(cache) == compiled["compiled"]
    point = define_points()
    assert dataclass_code.stats == {"found": compiled["compiled"], "compiled": 0}
    a = point(1, tags=("x",))
    assert a == point(1, 0, ("x",)) and a != point(2) and repr(a) == "Point(x=1, y=0, tags=('x',))"
    assert hash(a) == hash(point(1, 0, ("x",))) and point(3).tags == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.x = 2  # type: ignore[misc]


@pytest.mark.parametrize("content", [None, b"", b"dataclass-code\0\x00\x00\r\n{}", b"not a cache at all"])
def test_a_missing_stale_or_corrupt_cache_compiles_as_before(fresh: Path, content: bytes | None) -> None:
    cache = fresh / "code.marshal"
    if content is not None:
        cache.write_bytes(content)
    assert dataclass_code.install(cache) == 0
    point = define_points()
    assert dataclass_code.stats["found"] == 0 and dataclass_code.stats["compiled"] >= 4
    assert point(1) == point(1) and repr(point(2, 3)) == "Point(x=2, y=3, tags=())"


def test_a_cache_of_another_python_is_not_read(fresh: Path) -> None:
    cache = fresh / "code.marshal"
    dataclass_code.record(["points"], cache)
    data = cache.read_bytes()
    cache.write_bytes(data.replace(dataclass_code.MAGIC, b"dataclass-code\0" + b"\xff\xff\r\n", 1))
    dataclass_code._codes.clear()
    assert dataclass_code.install(cache) == 0


# What start.sh exports (its `export` lines): with it, importing `service` reads no settings
# (service/runtime.py).
RUN = {
    "cwd": ROOT,
    "env": start_env(ROOT, dict(os.environ)),
    "capture_output": True,
    "text": True,
    "check": True,
}


def test_the_server_command_defines_no_dataclass_before_its_main_installs_the_code() -> None:
    code = (
        "import dataclasses, json; defined = []; process = dataclasses._process_class\n"
        "def counted(cls, *args): defined.append(cls.__qualname__); return process(cls, *args)\n"
        "dataclasses._process_class = counted; import service.ops.serve; print(json.dumps(defined))"
    )
    assert json.loads(subprocess.run([sys.executable, "-c", code], **RUN, timeout=60).stdout) == []


@pytest.mark.slow
def test_the_build_s_recording_covers_the_server_s_path(tmp_path: Path) -> None:
    """`python -m service.dataclass_code` with start.sh's environment, then a server's imports in a
    fresh interpreter: every dataclass method is found, none compiled."""
    cache = tmp_path / "code.marshal"
    run = {**RUN, "timeout": 120}
    subprocess.run([sys.executable, "-m", "service.dataclass_code", "--out", str(cache)], **run)
    code = (
        "import json, sys; from pathlib import Path; from service import dataclass_code; "
        f"dataclass_code.install(Path({str(cache)!r})); "
        "[__import__(m) for m in dataclass_code.SERVER_PATH]; print(json.dumps(dataclass_code.stats))"
    )
    stats = json.loads(subprocess.run([sys.executable, "-c", code], **run).stdout.splitlines()[-1])
    assert stats["compiled"] == 0 and stats["found"] > 100
