"""bench/wake.py: `--host-pages warm` touches what the start will take, then gives it all back first."""

from pathlib import Path

import pytest

from bench import wake


def test_warm_host_pages_reads_every_file_then_drops_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models" / ".prepacked-x").mkdir(parents=True)
    (tmp_path / "models" / ".prepacked-x" / "model.onnx.data").write_bytes(b"\1" * (3 << 20))
    (tmp_path / "models" / "prepacked").symlink_to(".prepacked-x")
    (tmp_path / "start.sh").write_bytes(b"\2" * (1 << 20))
    events: list[str] = []
    monkeypatch.setattr(wake, "drop_caches", lambda: events.append("drop"))
    opened = []
    real_open = Path.open

    def recording_open(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        opened.append(self.relative_to(tmp_path).as_posix())
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", recording_open)

    touched = wake.warm_host_pages(tmp_path, anon_mb=2)

    assert touched == 3 + 1 + 2  # each file once (not again through the symlink), then the anonymous MB
    assert sorted(opened) == ["models/.prepacked-x/model.onnx.data", "start.sh"]
    assert events == ["drop", "drop"]  # dropped before reading (new pages) and after (free for the start)


def test_alternated_reverses_the_order_on_odd_rounds() -> None:
    assert wake._alternated(["cold", "warm"], 0) == ["cold", "warm"]
    assert wake._alternated(["cold", "warm"], 1) == ["warm", "cold"]
