"""The service's FastAPI app on Ray Serve: the same routes, schemas and errors, in N replicas.

Each replica is the whole app in one process, as one plain instance is: its own registry under
its own MEMORY_BUDGET_MB (the memory Ray reserves for it), its own micro-batching, memory watchdog
and limits. Serve's proxy spreads requests over the replicas and, with autoscaling, adds replicas
while each has more than `target_ongoing_requests` in flight.

    python -m service.scale serve --replicas 2            # a local cluster, http://127.0.0.1:8000
    serve run service/scale/serve.yaml                    # the same from Serve's config file
    serve run service.scale.serve:app_builder replicas=2  # or from its builder, with arguments
"""

import signal
import threading
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from service.scale.cluster import worker_options

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_NAME = "sentiment"


class ReplicaOptions(BaseModel):
    """A deployment's size: the builder's arguments in a config file or after `serve run`."""

    replicas: int = Field(default=1, ge=1, description="a fixed number of replicas")
    autoscale: tuple[int, int] | None = Field(
        default=None, description="(min, max) replicas to autoscale between, instead of `replicas`"
    )
    target_ongoing_requests: float = Field(default=8, gt=0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    cpus_per_replica: float = Field(default=1.0, gt=0)
    memory_mb: int = Field(default=1024, gt=0)


class ServeOptions(ReplicaOptions):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


def _api() -> "FastAPI":
    """Imported in the replica, once Ray has set its environment: the settings are the replica's."""
    from main import app

    return app


@serve.deployment(name=APP_NAME)
@serve.ingress(_api)
class SentimentAPI:
    """One replica: the app and its lifespan (micro-batching workers, watchdog) in this process."""


def build(options: ReplicaOptions) -> Application:
    if options.autoscale is not None:
        low, high = options.autoscale
        scaling: dict[str, object] = {
            "autoscaling_config": {
                "min_replicas": low,
                "initial_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": options.target_ongoing_requests,
            }
        }
    else:
        scaling = {"num_replicas": options.replicas}
    return SentimentAPI.options(
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options=worker_options(options.cpus_per_replica, options.memory_mb),
        **scaling,
    ).bind()


def app_builder(args: ReplicaOptions) -> Application:
    """What `serve run` / a Serve config file's `import_path` names; `args` are ReplicaOptions."""
    return build(args)


def start(options: ServeOptions) -> None:
    """Deploy on the connected cluster and return once every replica is up."""
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(build(options), name=APP_NAME, route_prefix="/")


def run(options: ServeOptions) -> None:
    """Deploy, then serve until SIGINT or SIGTERM, and take this application down (only it: on a
    shared cluster other Serve applications keep running; `serve deploy` leaves it up instead)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    start(options)
    print(f"serving on http://{options.host}:{options.port} (Ctrl-C stops)", flush=True)
    stop.wait()
    serve.delete(APP_NAME)
