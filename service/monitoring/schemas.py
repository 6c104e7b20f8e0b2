"""The dashboard's feed: the memory report and cumulative request counters the page turns into rates."""

from pydantic import BaseModel, Field

from service.system.schemas import MemoryReport


class RouteStats(BaseModel):
    count: float = Field(description="Requests answered since start (all workers in multiprocess mode).")
    sum_s: float = Field(description="Their total latency in seconds.")
    errors: float = Field(description="Those answered with a 5xx status.")
    buckets: dict[str, float] = Field(description="Cumulative latency histogram: upper bound (s) -> count.")


class DashboardData(BaseModel):
    time: float = Field(description="Server time (Unix seconds) of this reading.")
    memory: MemoryReport
    routes: dict[str, RouteStats] = Field(description="Keyed by `METHOD /route/template`.")
