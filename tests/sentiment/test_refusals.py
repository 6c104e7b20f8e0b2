"""Bodies that cannot be valid are refused on their shape, before item-by-item validation, and
an error reply stays small whatever the request: a bounded list of problems that says how many it
left out. (tests/ops/test_refusals.py measures the memory of the same bodies on a real server.)"""

import json

import pytest

from service.exceptions import MAX_PROBLEM_CHARS, MAX_PROBLEMS

MAX_BATCH = 64


@pytest.fixture(scope="module")
def client():
    from tests.support import app_client

    # Nothing here reaches a model: every body is refused by validation.
    with app_client(BACKEND="onnx", ONNX_DIR="/nonexistent", MAX_BATCH=str(MAX_BATCH)) as client:
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
    "100k-strings": compact({"texts": ["hola"] * 100_000}),
    "100k-lists": compact({"texts": [[]] * 100_000}),
    "100k-objects": compact({"texts": [{}] * 100_000}),
    "100k-nulls": compact({"texts": [None] * 100_000}),
}


@pytest.mark.parametrize("name", HUGE_BODIES)
def test_a_huge_texts_list_is_refused_on_its_count_alone(client, name):
    body = HUGE_BODIES[name]
    response = post(client, body)
    error = error_of(response)
    assert "100000 texts sent; at most MAX_BATCH=64" in error["message"], error
    assert len(error["problems"]) == 1 and "left_out" not in error
    assert len(response.content) < 1000 < len(body)


def test_many_unknown_keys_are_one_problem_naming_a_few(client):
    body = compact({"text": "hola", **{f"key{i}": 1 for i in range(100_000)}})
    response = post(client, body)
    error = error_of(response)
    assert "unknown field(s) 'key0', 'key1', 'key2', 'key3', 'key4' and 99995 more" in error["message"]
    assert len(response.content) < 1000


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
        (b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),  # nesting: the parser refuses
        (b'{"text": ' + b"9" * 100_000 + b"}", 400),  # an integer literal of 100k digits
        (b'{"text": 1e999999}', 422),  # a float literal that overflows to inf: not a string
        (b'{"text": NaN}', 422),
        (b'{"texts": [' + b'"' + b"x" * 500_000 + b'"]}', 422),  # one text far over MAX_TEXT_CHARS
    ],
    ids=["deep-texts", "huge-int", "huge-float", "nan", "huge-string"],
)
def test_other_hostile_literals_get_a_small_4xx(client, body, status):
    response = post(client, body)
    error_of(response, status)
    assert len(response.content) < 1000
