"""The profiler's load: a seeded mix of real-looking and hostile requests, sent by Locust (bench/swarm.py).

The mix is what a public endpoint sees: single tweets in both languages, batches up to MAX_BATCH,
malformed and oversized input that must be refused cheaply, operational polling, and (with
OCR files) generated images and PDFs, some of them broken or decompression bombs.
"""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from bench.server import multipart
from bench.swarm import Job, Request, Swarm

SPANISH = [
    "¡Qué buen día hace hoy! 😍",
    "No puedo más con este tráfico, odio los lunes 😡",
    "@maria_lopez jajajaja qué risa me das",
    "El servicio fue pésimo, nunca más vuelvo #MalaAtencion",
    "Mañana hay partido, a ver qué pasa",
    "Me encanta esta canción ❤️ https://t.co/abc123",
    "Estoy cansado pero feliz después del maratón",
    "Qué asco de clima, llueve todo el día…",
    "Gracias a todos por venir!!! 🎉🎉🎉",
    "No sé qué opinar de la película, tiene cosas buenas y malas",
]
ENGLISH = [
    "I love this so much!!! 😍",
    "Worst customer service ever, never again #fail",
    "@john_doe hahahaha you made my day",
    "The meeting was moved to Thursday",
    "Can't believe how good this album is ❤️ https://t.co/xyz",
    "Tired of waiting for this bus 😒",
    "Not sure how I feel about the new update",
    "Thanks everyone for the birthday wishes! 🎂",
]


@dataclass(frozen=True)
class Call:
    kind: str  # single, batch, hostile, ops or ocr
    name: str
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True)
class Result:
    call: Call
    status: int  # 0: the connection failed
    seconds: float
    at: float  # when it started, in seconds since the load began


def _json_call(kind: str, name: str, payload: object) -> Call:
    return Call(kind, name, "POST", "/analyze", json.dumps(payload).encode(), "application/json")


def _tweet(rng: random.Random, lang: str) -> str:
    """A corpus tweet, sometimes repeated into a longer text (longer inputs cost more memory)."""
    text = rng.choice(SPANISH if lang == "es" else ENGLISH)
    return " ".join([text] * rng.choice((1, 1, 1, 2, 5, 12)))


def _single(rng: random.Random) -> Call:
    lang = rng.choice(("es", "es", "en"))
    return _json_call("single", f"single:{lang}", {"text": _tweet(rng, lang), "lang": lang})


def _batch(rng: random.Random, max_batch: int) -> Call:
    lang = rng.choice(("es", "en"))
    size = rng.choice([n for n in (2, 4, 8, 16, 32) if n <= max_batch] or [1])
    return _json_call(
        "batch", f"batch:{size}", {"texts": [_tweet(rng, lang) for _ in range(size)], "lang": lang}
    )


HOSTILE: dict[str, Callable[[], Call]] = {
    "empty": lambda: _json_call("hostile", "empty", {"text": ""}),
    "whitespace": lambda: _json_call("hostile", "whitespace", {"text": " \n\t "}),
    "too_long": lambda: _json_call("hostile", "too_long", {"text": "ja" * 50_000}),
    "over_batch": lambda: _json_call("hostile", "over_batch", {"texts": ["hola"] * 5000}),
    "unknown_task": lambda: _json_call("hostile", "unknown_task", {"text": "hola", "task": "sarcasm"}),
    "unknown_lang": lambda: _json_call("hostile", "unknown_lang", {"text": "salut", "lang": "fr"}),
    "empty_after_preprocessing": lambda: _json_call("hostile", "empty_after_preprocessing", {"text": "☹☹☹☹"}),
    "wrong_type": lambda: _json_call("hostile", "wrong_type", {"text": 12345}),
    "extra_field": lambda: _json_call("hostile", "extra_field", {"text": "hola", "debug": True}),
    "emoji_flood": lambda: _json_call("hostile", "emoji_flood", {"text": "😂" * 1900}),
    "lone_surrogate": lambda: Call(
        "hostile", "lone_surrogate", "POST", "/analyze", b'{"text": "hola \\ud800 mundo"}', "application/json"
    ),
    "invalid_json": lambda: Call(
        "hostile", "invalid_json", "POST", "/analyze", b'{"text": "hola', "application/json"
    ),
    "deep_nesting": lambda: Call(
        "hostile",
        "deep_nesting",
        "POST",
        "/analyze",
        b'{"text": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        "application/json",
    ),
}

OPS = [
    Call("ops", "health", "GET", "/health"),
    Call("ops", "memory", "GET", "/memory"),
    Call("ops", "metrics", "GET", "/metrics"),
]


def _ocr_documents() -> list[tuple[str, str, str, bytes]]:
    """(name, lang, content type, bytes), cycled through by the OCR calls."""
    from bench.documents import encode, pdf_of, png_header_only, text_page

    es, en = text_page(SPANISH[:6], size=(1275, 420)), text_page(ENGLISH[:6], size=(1275, 420))
    png = encode(es, "PNG")
    return [
        ("png_es", "es", "image/png", png),
        ("jpeg_en", "en", "image/jpeg", encode(en, "JPEG", quality=85)),
        ("pdf_2_pages", "es", "application/pdf", pdf_of([es, en])),
        ("png_bomb_header", "es", "image/png", png_header_only(40_000, 40_000)),
        ("truncated_png", "es", "image/png", png[: len(png) // 3]),
        ("not_an_image", "en", "image/png", random.Random(7).randbytes(50_000)),
    ]


def _ocr_calls(count: int) -> list[Call]:
    try:
        documents = _ocr_documents()
    except ImportError as error:
        raise SystemExit(f"--ocr-files needs Pillow (requirements.txt): {error}") from error
    calls = []
    for index in range(count):
        name, lang, content_type, data = documents[index % len(documents)]
        analyze = "true" if index % 2 else "false"
        body, multipart_type = multipart({"lang": lang, "analyze": analyze}, name, data, content_type)
        calls.append(Call("ocr", f"ocr:{name}", "POST", "/ocr", body, multipart_type))
    return calls


def plan(requests: int, ocr_files: int, max_batch: int = 32, seed: int = 0) -> tuple[list[Call], list[Call]]:
    """The warm-up (one call of each kind that loads something: both languages' models, a batch, an
    OCR upload) and the rest of the `requests` + `ocr_files` calls, OCR spread evenly among them."""
    rng = random.Random(seed)
    hostile = list(HOSTILE.values())
    makers: list[tuple[float, Callable[[], Call]]] = [
        (0.45, lambda: _single(rng)),
        (0.20, lambda: _batch(rng, max_batch)),
        (0.25, lambda: rng.choice(hostile)()),
        (0.10, lambda: rng.choice(OPS)),
    ]
    weights = [weight for weight, _ in makers]
    warmup = [
        _json_call("single", "single:es", {"text": SPANISH[0], "lang": "es"}),
        _json_call("single", "single:en", {"text": ENGLISH[0], "lang": "en"}),
        _batch(rng, max_batch),
    ][:requests]
    rest = [rng.choices(makers, weights)[0][1]() for _ in range(requests - len(warmup))]
    ocr = _ocr_calls(ocr_files)
    warmup += ocr[:1]
    spread = [(float(index), call) for index, call in enumerate(rest)]
    spread += [((j + 1) * len(rest) / len(ocr) + 0.5, call) for j, call in enumerate(ocr[1:])]
    return warmup, [call for _, call in sorted(spread, key=lambda item: item[0])]


def run(swarm: Swarm, base_url: str, calls: list[Call], concurrency: int, started: float) -> list[Result]:
    """Send the calls with `concurrency` closed-loop Locust users, each taking the next call in
    order; results come back in the calls' order."""
    plan = [Request(call.method, call.path, call.body, call.content_type) for call in calls]
    outcome = swarm.run(Job(base_url, max(concurrency, 1), timeout_s=120.0, plan=plan))
    by_index = {record.index: record for record in outcome.records}
    return [
        Result(call, by_index[index].status, by_index[index].seconds, by_index[index].at - started)
        for index, call in enumerate(calls)
    ]
