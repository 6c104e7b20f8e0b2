"""The service's container image (container/Containerfile), built and run with podman: the harness of
tests/container and of the 512 MB promise inside a container,

    python -m bench.container [--image TAG] [--minutes 5] [--users 4] [--cpus 1] [--wake-cpus 0.1]

which starts the image under --memory 512m and measures the wake-up at --wake-cpus (from `podman run`
to /health and to the first /analyze answer), then sends the hostile uploads of bench/hostile_files.py
(each alone, then four at once) and a mixed load (Locust users on /analyze, beside a loop of OCR pages,
batches of MAX_BATCH texts and hostile uploads) for --minutes, and prints one JSON line: the answers
by status, 5xx other than 503 + Retry-After, the container's OOM kills and peak memory read from its
own cgroup. The image is built by `build_image` (tests/container builds it once per session).
"""

import argparse
import json
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench import hostile_files
from bench.documents import encode, text_page
from bench.hostile import NAMES as HOSTILE
from bench.server import ROOT, Loopback, free_port, multipart
from bench.swarm import Job, Swarm

CONTAINERFILE = ROOT / "container" / "Containerfile"
COMPOSE_FILE = ROOT / "container" / "compose.yaml"
# What ../shared/container/build-base.sh makes from Debian's archive, with no registry.
LOCAL_BASE = "localhost/debian:bookworm"
IMAGE = "localhost/pysentimiento-512"
MB = 1024 * 1024


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def podman_unavailable() -> str | None:
    """Why podman cannot run containers here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman; .ci/run does)"
    try:
        info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return "`podman info` did not answer in 60 s"
    return None if info.returncode == 0 else f"`podman info` failed: {info.stderr.strip()[-500:]}"


def build_image(
    tag: str,
    log: Path,
    *,
    base: str = LOCAL_BASE,
    export_models: str = "sentiment:es,sentiment:en",
    models: Path | None = None,
    wheels: Path | None = None,
    extra_index_url: str = "",
    build_args: dict[str, str] | None = None,
) -> float:
    """`podman build` of container/Containerfile (Docker's image format: it keeps the HEALTHCHECK);
    `models`: a folder of <task>-<lang>/ transformers models to export instead of the hub's; `wheels`:
    a folder of wheels (torch's CPU build where PyTorch's index cannot be reached). Seconds taken."""
    args = {
        "BASE": base,
        "EXPORT_MODELS": export_models,
        "PIP_EXTRA_INDEX_URL": extra_index_url,
        **(build_args or {}),
    }
    command = ["podman", "build", "--format", "docker", "-f", str(CONTAINERFILE), "-t", tag]
    command += [f"--build-arg={name}={value}" for name, value in args.items()]
    command += [f"--build-context=models={models}"] if models else []
    command += [f"--build-context=wheels={wheels}"] if wheels else []
    started = time.perf_counter()
    with log.open("wb") as out:
        result = subprocess.run([*command, str(ROOT)], stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"podman build failed ({result.returncode}); {log}:\n{tail}")
    return time.perf_counter() - started


def model_context(folder: Path, sources: dict[str, Path]) -> Path:
    """A `models` build context: folder/<task>-<lang>/ for each {"sentiment-es": model dir}, hard links
    where the file system allows (copies otherwise)."""
    for name, source in sources.items():
        with suppress(FileExistsError):
            shutil.copytree(source, folder / name, copy_function=_link_or_copy)
    return folder


def _link_or_copy(source: str, target: str) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


@dataclass
class Container(Loopback):
    id: str
    port: int
    started: float  # perf_counter just before `podman run`

    def exec(self, *command: str, timeout: float = 60) -> str:
        return podman("exec", self.id, *command, timeout=timeout).stdout

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return state.stdout.strip() == "true"

    def logs(self, tail: int = 80) -> str:
        out = podman("logs", "--tail", str(tail), self.id, check=False)
        return out.stdout + out.stderr

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds from `podman run` until /health answers 200."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            with suppress(OSError, ValueError, IndexError):
                if self.request("GET", "/health", timeout=10).status == 200:
                    return time.perf_counter() - self.started
            if not self.running():
                raise RuntimeError(f"the container exited before /health answered:\n{self.logs()}")
            time.sleep(0.5)
        raise TimeoutError(f"/health did not answer within {timeout_s} s:\n{self.logs()}")

    def cgroup_memory(self) -> dict[str, float]:
        """The container's own memory cgroup, as it sees it (v1 or v2): limit, peak (MB), OOM kills."""
        script = (
            "cd /sys/fs/cgroup; if [ -f memory.max ]; then "
            'echo "limit $(cat memory.max)"; echo "peak $(cat memory.peak 2>/dev/null || echo 0)"; '
            "grep '^oom_kill ' memory.events; else cd memory; "
            'echo "limit $(cat memory.limit_in_bytes)"; echo "peak $(cat memory.max_usage_in_bytes)"; '
            "grep '^oom_kill ' memory.oom_control; fi"
        )
        values = dict(line.split() for line in self.exec("sh", "-c", script).splitlines())
        return {
            "limit_mb": int(values["limit"]) / MB,
            "peak_mb": int(values["peak"]) / MB,
            "oom_kills": int(values["oom_kill"]),
        }

    def stop(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM, as a platform's deploy sends it: the exit status and the seconds it took."""
        started = time.perf_counter()
        podman("kill", "--signal", "TERM", self.id)
        waited = podman("wait", self.id, timeout=timeout_s)
        return int(waited.stdout.strip().splitlines()[-1]), time.perf_counter() - started


@contextmanager
def running_container(
    image: str,
    *run_args: str,
    startup_timeout_s: float = 600,
    env: dict[str, str] | None = None,
) -> Iterator[Container]:
    """`podman run -d` of `image` with its port on 127.0.0.1 and `run_args` (e.g. --memory 512m),
    wait for /health, yield it, remove it at the end."""
    port = free_port()
    command = ["run", "-d", "-p", f"127.0.0.1:{port}:8000", *run_args]
    command += [f"--env={name}={value}" for name, value in (env or {}).items()]
    started = time.perf_counter()
    container = Container(podman(*command, image).stdout.strip(), port, started)
    try:
        container.wait_healthy(startup_timeout_s)
        try:
            yield container
        except Exception as error:
            error.add_note(f"container log:\n{container.logs()}")
            raise
    finally:
        podman("rm", "-f", "-t", "0", container.id, check=False)


def first_answer_s(container: Container, timeout_s: float = 600) -> float:
    """Seconds from `podman run` until /analyze first answers 200 (the model loads on that request)."""
    body = json.dumps({"text": "¡Qué buen día hace hoy!"}).encode()
    response = container.request(
        "POST", "/analyze", body, {"Content-Type": "application/json"}, timeout=timeout_s
    )
    if response.status != 200:
        raise RuntimeError(f"/analyze answered {response.status}: {response.body[:500]!r}")
    return time.perf_counter() - container.started


def tweet(rng: random.Random) -> str:
    """A tweet-sized text for the Locust users (a module-level function: the job is pickled)."""
    words = ["qué", "buen", "día", "odio", "esto", "me", "encanta", "la", "película", "horrible", "@user"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))


class Tally:
    """Answers by status, and the 5xx that break the promise (anything but 503 with Retry-After)."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.broken: list[str] = []
        self.lock = threading.Lock()

    def add(self, what: str, status: int, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            retry_after = headers is None or "retry-after" in headers  # Locust records no headers
            if status == 0 or (status >= 500 and not (status == 503 and retry_after)):
                self.broken.append(f"{what}: {status}")


def hostile_round(container: Container, tally: Tally, uploads: dict[str, bytes], at_once: int) -> None:
    """Each hostile upload `at_once` times concurrently, asking for word boxes (the most a page holds)."""
    for name, data in uploads.items():
        body, content_type = multipart(
            {"lang": "es", "words": "true"}, "upload", data, "application/octet-stream"
        )

        def send(name: str = name, body: bytes = body, content_type: str = content_type) -> None:
            try:
                response = container.request(
                    "POST", "/ocr", body, {"Content-Type": content_type}, timeout=300
                )
                tally.add(name, response.status, response.headers)
            except (OSError, IndexError) as error:  # IndexError: closed without an answer
                tally.add(f"{name} ({error!r})", 0)

        threads = [threading.Thread(target=send) for _ in range(at_once)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def side_load(container: Container, tally: Tally, uploads: dict[str, bytes], until: float) -> None:
    """Beside the Locust users: OCR of a page, a batch of texts and a hostile upload, in turn."""
    page, content_type = multipart({"lang": "es"}, "page.png", encode(text_page(["hola mundo"])), "image/png")
    batch = json.dumps({"texts": [tweet(random.Random(i)) for i in range(32)]}).encode()
    rng = random.Random(0)
    while time.perf_counter() < until:
        name = rng.choice(list(uploads))
        hostile, hostile_type = multipart({"lang": "es"}, name, uploads[name], "application/octet-stream")
        for what, path, body, kind in (
            ("ocr page", "/ocr", page, content_type),
            ("batch", "/analyze", batch, "application/json"),
            (name, "/ocr", hostile, hostile_type),
        ):
            try:
                response = container.request("POST", path, body, {"Content-Type": kind}, timeout=300)
                tally.add(what, response.status, response.headers)
            except (OSError, IndexError) as error:  # IndexError: closed without an answer
                tally.add(f"{what} ({error!r})", 0)


def promise(image: str, minutes: float, users: int, cpus: str, wake_cpus: str) -> dict:
    """The JSON line of `python -m bench.container` (module docstring)."""
    result: dict = {"image": image, "memory": "512m"}
    with running_container(image, "--memory", "512m", "--cpus", wake_cpus) as container:
        result["wake"] = {
            "cpus": wake_cpus,
            "health_s": round(time.perf_counter() - container.started, 1),
            "first_analyze_s": round(first_answer_s(container), 1),
        }
    uploads = {name: getattr(hostile_files, name)() for name in HOSTILE}
    tally = Tally()
    with running_container(image, "--memory", "512m", "--cpus", cpus) as container:
        first_answer_s(container)
        hostile_round(container, tally, uploads, at_once=1)
        hostile_round(container, tally, {name: uploads[name] for name in HOSTILE[3:6]}, at_once=4)
        result["hostile"] = dict(sorted(tally.statuses.items()))
        until = time.perf_counter() + minutes * 60
        side = threading.Thread(target=side_load, args=(container, tally, uploads, until))
        side.start()
        with Swarm() as swarm:
            url = f"http://127.0.0.1:{container.port}"
            outcome = swarm.run(Job(url, users=users, timeout_s=300, text=tweet, seconds=minutes * 60))
        side.join()
        for record in outcome.records:
            tally.add("analyze (locust)", record.status)
        result.update(
            cpus=cpus,
            minutes=minutes,
            users=users,
            analyze_answers=len(outcome.records),
            statuses=dict(sorted(tally.statuses.items())),
            broken=tally.broken[:20],
            broken_count=len(tally.broken),
            still_serving=container.request("GET", "/health").status == 200,
            cgroup=container.cgroup_memory(),
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.container", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image", default=IMAGE, help=f"an image built from container/Containerfile ({IMAGE})"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="the mixed load's length")
    parser.add_argument("--users", type=int, default=4, help="Locust users on /analyze during the load")
    parser.add_argument("--cpus", default="1", help="podman run --cpus of the load run")
    parser.add_argument("--wake-cpus", default="0.1", help="podman run --cpus of the wake-up run")
    args = parser.parse_args()
    print(json.dumps(promise(args.image, args.minutes, args.users, args.cpus, args.wake_cpus)))


if __name__ == "__main__":
    from bench.container import main as run  # the module's own `tweet`, so the Locust child can unpickle it

    run()
