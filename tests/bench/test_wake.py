"""bench/wake.py: the cgroup's process sampler keeps only processes it could read whole."""

import os
from pathlib import Path

import pytest

from bench import wake


def test_a_process_gone_before_its_command_line_is_read_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = 2**22 + 1  # above any pid_max: /proc/<gone>/cmdline cannot be read
    procs = tmp_path / "cgroup.procs"
    procs.write_text(f"{os.getpid()}\n{gone}\n")
    monkeypatch.setattr(wake, "cpu_seconds", lambda pid: 0.5)  # it still had a CPU time when asked
    sampler = wake.Processes(procs, started=0.0)

    sampler.sample()

    assert list(sampler.seen) == [os.getpid()]
    assert sampler.seen[os.getpid()]["cpu_s"] == 0.5
    assert "python" in sampler.seen[os.getpid()]["cmd"]
