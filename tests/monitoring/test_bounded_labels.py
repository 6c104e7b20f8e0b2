"""No label value comes from the client: 10,000 made-up methods, paths and query strings, sent to a
real server in a real 512 MB memory cgroup, add no series to /metrics or rows to the dashboard's
route table, and no memory. Before the fix each made-up method was a new series (the issue's
2,000 requests grew /metrics from 8 KB to 79 MB)."""

from contextlib import ExitStack

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.hostile import made_up_requests
from bench.server import Server, pipeline
from service.monitoring.metrics import OTHER_METHOD, method_label
from tests.ops.test_soak import memory_cgroup
from tests.support import real_server

KEY = "label-test-key"
AUTH = {"X-API-Key": KEY}
REQUESTS = 10_000


def test_method_label_has_a_fixed_set():
    assert method_label("POST") == "POST"
    assert method_label("MKCALENDAR") == OTHER_METHOD
    assert method_label("get") == OTHER_METHOD  # methods are case-sensitive: this is not GET


def _series(server: Server) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = server.request("GET", "/metrics", headers=AUTH).body.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _routes(server: Server) -> dict:
    return server.request("GET", "/dashboard/data", headers=AUTH).json()["routes"]


def _request_series(series: set) -> set:
    return {item for item in series if item[0].startswith("http_request")}


@pytest.mark.slow
def test_client_made_methods_paths_and_queries_add_no_series(tmp_path):
    with ExitStack() as stack:
        cgroup = stack.enter_context(memory_cgroup(512))
        server = stack.enter_context(
            real_server(
                tmp_path,
                cgroup=cgroup.path,
                API_KEY=KEY,
                RATE_LIMIT_PER_MIN="30",
                BACKEND="onnx",
                ONNX_DIR=str(tmp_path),  # nothing to load: every request here is refused or routed
            )
        )
        # Every series these requests can make, first: each kind of request, past the rate limit.
        warm = pipeline(server, made_up_requests(200, 0))
        assert {401, 405, 429} <= set(warm), set(warm)
        _series(server), _routes(server)  # the scrapes' own series
        before, routes_before, anon_before = _series(server), _routes(server), server.anon_mb()

        statuses = pipeline(server, made_up_requests(REQUESTS, 200))
        assert len(statuses) == REQUESTS and set(statuses) <= {401, 405, 429}, set(statuses)

        after, routes_after, anon_after = _series(server), _routes(server), server.anon_mb()
        assert cgroup.oom_kills() == 0
        assert server.request("GET", "/health").status == 200
    assert _request_series(after) == _request_series(before)
    assert set(routes_after) == set(routes_before)
    assert {name.split()[0] for name in routes_after} <= {"GET", OTHER_METHOD}, set(routes_after)
    assert anon_after - anon_before < 5, (anon_before, anon_after)
