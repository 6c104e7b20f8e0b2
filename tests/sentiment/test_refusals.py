"""Bodies that cannot be valid are refused on their shape: their structure before they are parsed
(ShapeCheckedRoute), their keys and list length before item-by-item validation (AnalyzeRequest);
an error reply stays small whatever the request: a bounded list of problems that says how many it
left out. (tests/ops/test_refusals.py measures the memory of such bodies on a real server.)"""

import json

import pytest
from starlette.requests import Request

from service.error_handlers import MAX_PROBLEM_CHARS, MAX_PROBLEMS

MAX_BATCH = 64
MAX_TEXT_CHARS = 100


@pytest.fixture(scope="module")
def client():
    from tests.support import app_client

    # Nothing here reaches a model: every body is refused by validation.
    with app_client(
        BACKEND="onnx", ONNX_DIR="/nonexistent", MAX_BATCH=str(MAX_BATCH), MAX_TEXT_CHARS=str(MAX_TEXT_CHARS)
    ) as client:
        yield client


def post(client, body: bytes):
    return client.post("/analyze", content=body, headers={"content-type": "application/json"})


def compact(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def error_of(response, status: int = 422) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


HUGE_BODIES = {
    "100k-ints": compact({"texts": [1] * 100_000}),
    "100k-strings": compact({"texts": ["a,b[c{d"] * 100_000}),
    "100k-nulls": compact({"texts": [None] * 100_000}),
    "100k-lists": compact({"texts": [[]] * 100_000}),
    "100k-objects": compact({"texts": [{}] * 100_000}),
    "100k-keys": compact({f"key{i}": 1 for i in range(100_000)}),
    "deep-texts": b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.fixture
def parsed(monkeypatch) -> list[str]:
    """The paths whose body FastAPI parsed into objects (`Request.json`)."""
    paths: list[str] = []
    parse = Request.json

    async def spy(request: Request):
        paths.append(request.url.path)
        return await parse(request)

    monkeypatch.setattr(Request, "json", spy)
    return paths


@pytest.mark.parametrize("name", HUGE_BODIES)
def test_a_body_is_refused_on_its_structure_before_it_is_parsed(client, name, parsed):
    body = HUGE_BODIES[name]
    response = post(client, body)
    error = error_of(response)
    assert "commas, brackets and braces: more than MAX_BATCH=64 texts" in error["message"], error
    assert len(error["problems"]) == 1 and "left_out" not in error
    assert len(response.content) < 1000 < len(body)
    assert parsed == []  # never turned into objects


def test_a_body_at_the_bound_is_parsed_and_valid(client, parsed):
    """MAX_BATCH texts of MAX_TEXT_CHARS commas each: as much structure as a valid body may hold."""
    response = post(client, compact({"texts": ["," * MAX_TEXT_CHARS] * MAX_BATCH, "task": "sentiment"}))
    assert error_of(response, 503)["code"] == "model_unavailable"  # valid: on to the (absent) model
    assert parsed == ["/analyze"]


def test_unknown_keys_are_one_problem_naming_a_few(client):
    response = post(client, compact({"text": "hola", **{f"key{i}": 1 for i in range(30)}}))
    error = error_of(response)
    assert "unknown field(s) 'key0', 'key1', 'key2', 'key3', 'key4' and 25 more" in error["message"]
    assert len(error["problems"]) == 1


def test_a_huge_unknown_key_is_clipped_in_the_reply(client):
    body = compact({"text": "hola", "k" * 1_000_000: 1})
    response = post(client, body)
    assert "unknown field(s) 'kkkk" in error_of(response)["message"]
    assert len(response.content) < 1000


def test_a_batch_of_bad_items_lists_a_bounded_number_and_says_how_many_were_left_out(client):
    response = post(client, compact({"texts": [1] * MAX_BATCH}))
    error = error_of(response)
    assert len(error["problems"]) == MAX_PROBLEMS
    assert error["left_out"] == MAX_BATCH - MAX_PROBLEMS
    assert error["problems"][0] == {"field": "texts.0", "problem": "Input should be a valid string"}
    assert f"and {MAX_BATCH - MAX_PROBLEMS} more problem(s) not listed" in error["message"]


def test_every_problem_is_clipped(client):
    error = error_of(post(client, compact({"texts": [1], "task": "x" * 100_000})))
    assert all(
        len(p["field"]) <= MAX_PROBLEM_CHARS and len(p["problem"]) <= MAX_PROBLEM_CHARS
        for p in error["problems"]
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"text": ' + b"9" * 100_000 + b"}", 400),  # an integer literal of 100k digits
        (b'{"text": 1e999999}', 422),  # a float literal that overflows to inf: not a string
        (b'{"text": NaN}', 422),
        (b'{"texts": [' + b'"' + b"x" * 500_000 + b'"]}', 422),  # one text far over MAX_TEXT_CHARS
    ],
    ids=["huge-int", "huge-float", "nan", "huge-string"],
)
def test_other_hostile_literals_get_a_small_4xx(client, body, status):
    response = post(client, body)
    error_of(response, status)
    assert len(response.content) < 1000
