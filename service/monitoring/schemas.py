"""The dashboard's feeds: the memory report and request counters it polls, and the history it starts from."""

from pydantic import BaseModel, Field

from service.events import Kind
from service.system.schemas import MemoryReport


class RouteStats(BaseModel):
    count: float = Field(description="Requests answered since start (all workers in multiprocess mode).")
    sum_s: float = Field(description="Their total latency in seconds.")
    errors: float = Field(description="Those answered with a 5xx status.")
    refused: float = Field(default=0, description="Those answered 503: memory, queue or model unavailable.")
    buckets: dict[str, float] = Field(description="Cumulative latency histogram: upper bound (s) -> count.")


class DashboardData(BaseModel):
    time: float = Field(description="Server time (Unix seconds) of this reading.")
    memory: MemoryReport
    routes: dict[str, RouteStats] = Field(description="Keyed by `METHOD /route/template`.")


class HistoryEvent(BaseModel):
    t: float = Field(description="When it happened (Unix seconds); the first of a merged run.")
    t_last: float = Field(description="The last of a run of identical events merged into this one.")
    kind: Kind
    detail: str = Field(
        description="What it was about: a model key, what was refused, the watchdog's action."
    )
    value: float = Field(description="MB: a load's cost, an eviction's RSS freed, RSS at a watchdog action.")
    count: int = Field(description="Identical events in a row, at most MERGE_S apart, merged into this one.")


class History(BaseModel):
    step_s: float = Field(description="Seconds between samples (HISTORY_STEP_S).")
    window_s: float = Field(description="How far back samples reach when the ring is full.")
    capacity: int = Field(description="Samples the ring holds.")
    event_capacity: int = Field(description="Events the ring holds (HISTORY_EVENTS).")
    bytes: int = Field(description="The fixed memory both rings take, allocated and touched at start.")
    persisted: bool = Field(description="Kept in a file under HISTORY_DIR: it outlives a worker's recycle.")
    pid: int = Field(description="The worker answering.")
    samples: dict[str, list[float]] = Field(
        description="Columns, oldest first: `t`, the readings at t, and the counts of the step ending at t."
    )
    events: list[HistoryEvent] = Field(description="Oldest first.")
