"""Bulk scoring on a local Ray cluster: every row out, the same predictions as `/analyze` and the
same errors as `/analyze/file`, from CSV, JSONL and Parquet into Parquet and JSON Lines."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray extra is not installed (bash start.sh install ray)")

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from service.scale.score import ScoreOptions, score
from tests.support import ROOT, app_client, configured, needs_data, read_labelled

pytestmark = [pytest.mark.slow, needs_data]
TOLERANCE = 1e-5
BAD_TEXTS = {
    "empty": "",
    "blank": "   ",
    "too-long": "muy largo " * 201,  # 2010 characters, over MAX_TEXT_CHARS=2000
    "emptied": "☹☹☹☹",  # nothing left after preprocessing
    "invisible": "\u200b\u200b",
}


def corpus(count: int = 120) -> list[tuple[str, str]]:
    """(id, text): tweets from the shared labelled set with the bad rows spread among them."""
    texts = read_labelled("xlmt_spanish")[0][:count]
    rows = [(f"t{index}", text) for index, text in enumerate(texts)]
    for offset, (name, text) in enumerate(BAD_TEXTS.items()):
        rows.insert(offset * 20 + 3, (name, text))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text"])
        writer.writerows(rows)
    return path


def read_output(path: Path, output_format: str) -> list[dict]:
    if output_format == "parquet":
        return pads.dataset(path, format="parquet").to_table().to_pylist()
    files = sorted(path.glob("*.jsonl"))
    assert files, f"no JSON Lines under {path}"
    return [json.loads(line) for file in files for line in file.read_text(encoding="utf-8").splitlines()]


def served(model: Path, rows: list[tuple[str, str]], upload: Path) -> tuple[dict[str, dict], list[dict]]:
    """The plain app's answers: `/analyze` for each good text (in batches), `/analyze/file` for the file."""
    with app_client(MODEL_SENTIMENT_ES=str(model), MEMORY_BUDGET_MB="8192") as client:
        good = [(key, text) for key, text in rows if key not in BAD_TEXTS]
        answers = {}
        for start in range(0, len(good), 32):
            chunk = good[start : start + 32]
            response = client.post("/analyze", json={"texts": [text for _, text in chunk]})
            assert response.status_code == 200, response.text
            answers.update(zip((key for key, _ in chunk), response.json()["results"], strict=True))
        response = client.post(
            "/analyze/file", files={"file": (upload.name, upload.read_bytes())}, data={"id_column": "id"}
        )
        assert response.status_code == 200, response.text
        return answers, [json.loads(line) for line in response.text.splitlines()]


def assert_same_prediction(got: dict, expected: dict, where: str) -> None:
    assert got["label"] == expected["label"], where
    assert got["probas"].keys() == expected["probas"].keys(), where
    for label, p in expected["probas"].items():
        assert abs(got["probas"][label] - p) <= TOLERANCE, (where, label, got["probas"][label], p)


def test_csv_to_parquet_equals_analyze_and_keeps_bad_rows(ray_cluster, onnx_minilm, tmp_path):
    rows = corpus()
    source = write_csv(tmp_path / "tweets.csv", rows)
    options = ScoreOptions(
        inputs=[str(source)],
        output=str(tmp_path / "out"),
        id_column="id",
        model=str(onnx_minilm),
        actors=(2, 2),
        cpus_per_actor=0.5,
        batch_size=16,
    )
    summary = score(options)
    assert summary["rows"] == len(rows)
    assert summary["errors"] == len(BAD_TEXTS) and summary["errors_by_code"] == {"invalid_input": 5}

    scored = read_output(tmp_path / "out", "parquet")
    assert [row["id"] for row in scored] == [key for key, _ in rows]  # every row, in input order
    assert [row["row"] for row in scored] == list(range(1, len(rows) + 1))
    assert {row["path"] for row in scored} == {str(source)}
    by_analyze, by_upload = served(onnx_minilm, rows, source)
    for row, line in zip(scored, by_upload, strict=True):
        assert line["id"] == row["id"]
        if row["id"] in BAD_TEXTS:
            assert row["label"] is None and row["probas"] is None
            assert row["error"] == line["error"], row["id"]  # the upload route's code and message
        else:
            assert row["error"] is None
            assert_same_prediction(row, by_analyze[row["id"]], row["id"])
            assert_same_prediction(row, line, row["id"])
    assert "MAX_TEXT_CHARS=2000" in next(r for r in scored if r["id"] == "too-long")["error"]["message"]


def test_jsonl_glob_to_jsonl(ray_cluster, onnx_minilm, tmp_path):
    lines = [
        {"tweet_id": 1, "text": "me encanta este lugar 😍"},
        "not json at all",
        {"tweet_id": "b2", "text": None},
        {"tweet_id": 3.5, "text": "odio los lunes"},
        {"text": "sin id"},
    ]
    (tmp_path / "in").mkdir()
    for part in ("a", "b"):
        body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
        (tmp_path / "in" / f"{part}.jsonl").write_text(body + "\n", encoding="utf-8")
    summary = score(
        ScoreOptions(
            inputs=[f"{tmp_path}/in/*.jsonl"],
            output=str(tmp_path / "out"),
            output_format="jsonl",
            id_column="tweet_id",
            model=str(onnx_minilm),
            actors=(1, 1),
        )
    )
    assert summary["input_files"] == 2 and summary["rows"] == 10 and summary["errors"] == 4
    scored = read_output(tmp_path / "out", "jsonl")
    assert [(Path(r["path"]).name, r["row"], r["tweet_id"]) for r in scored[:5]] == [
        ("a.jsonl", 1, "1"),
        ("a.jsonl", 2, None),
        ("a.jsonl", 3, "b2"),
        ("a.jsonl", 4, "3.5"),
        ("a.jsonl", 5, None),
    ]
    assert scored[5:] == [{**row, "path": row["path"].replace("a.jsonl", "b.jsonl")} for row in scored[:5]]
    assert scored[1]["error"]["message"].startswith("the line is not valid JSON")
    assert scored[2]["error"] == {"code": "invalid_input", "message": "'text' is missing or not a string"}
    with app_client(MODEL_SENTIMENT_ES=str(onnx_minilm), MEMORY_BUDGET_MB="8192") as client:
        for index in (0, 3, 4):
            expected = client.post("/analyze", json={"text": lines[index]["text"]}).json()
            assert scored[index]["error"] is None
            assert_same_prediction(scored[index], expected, str(index))


def test_cli_parquet_on_an_existing_cluster(ray_cluster, onnx_minilm, tmp_path):
    """`python -m service.scale score --address` joins the running cluster; ids keep their type."""
    table = pa.table(
        {"id": pa.array([5, 6, 7], pa.int64()), "text": ["qué día tan bonito", None, "odio esto"]}
    )
    pq.write_table(table, tmp_path / "tweets.parquet")
    command = [sys.executable, "-m", "service.scale", "score", "--address", ray_cluster]
    command += ["--input", str(tmp_path / "tweets.parquet"), "--output", str(tmp_path / "out")]
    command += ["--id-column", "id", "--model", str(onnx_minilm), "--actors", "1", "--batch-size", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["rows"], summary["errors"], summary["format"]) == (3, 1, "parquet")
    written = pads.dataset(tmp_path / "out", format="parquet").to_table()
    assert written.schema.field("id").type == pa.int64()
    assert written.column("id").to_pylist() == [5, 6, 7]
    assert written.column("label").to_pylist()[1] is None
    assert written.column("error").to_pylist()[1] == {
        "code": "invalid_input",
        "message": "the text is missing",
    }
    # The output is not overwritten unless asked: a second run refuses before scoring anything.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds files; pass --overwrite" in again.stderr


def test_cli_refuses_bad_inputs_before_starting_ray(tmp_path, onnx_minilm):
    (tmp_path / "t.csv").write_text("id,body\n1,hola\n")
    base = [sys.executable, "-m", "service.scale", "score", "--output", str(tmp_path / "out")]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing listens there: Ray must not be reached
    cases = {
        "no column 'text'": ["--input", str(tmp_path / "t.csv"), "--model", str(onnx_minilm)],
        "matches no file": ["--input", f"{tmp_path}/*.parquet", "--model", str(onnx_minilm)],
        "no exported model": ["--input", str(tmp_path / "t.csv"), "--model", str(tmp_path)],
    }
    for message, args in cases.items():
        result = subprocess.run(base + args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr


@pytest.mark.slow
def test_auto_reads_each_row_with_its_own_language_s_model(ray_cluster, onnx_minilm, tmp_path):
    """--lang auto: each row to its language's model (here the same export under four names), with
    the language and its confidence in two more columns; undetected rows keep their error."""
    rows = [
        ("es", "¡Qué buen día hace hoy, me encanta esta ciudad!"),
        ("en", "What a lovely day, I really love this city"),
        ("short", "lol 😂"),
        ("it", "Che bella giornata oggi, adoro questa città"),
        ("fr", "Je ne sais pas quoi faire ce soir avec mes amis"),
        ("pt", "Que dia lindo hoje, eu adoro essa cidade"),
    ]
    source = write_csv(tmp_path / "mixed.csv", rows)
    models = {f"MODEL_SENTIMENT_{lang}": str(onnx_minilm) for lang in ("ES", "EN", "IT", "PT")}
    with configured(**models):
        options = ScoreOptions(
            inputs=[str(source)], output=str(tmp_path / "out"), id_column="id", lang="auto", actors=(1, 1)
        )
        summary = score(options)
    assert summary["errors_by_code"] == {"too_short": 1, "unknown_language": 1}
    scored = read_output(tmp_path / "out", "parquet")
    assert [row["lang"] for row in scored] == ["es", "en", None, "it", None, "pt"]
    assert [row["error"]["code"] if row["error"] else None for row in scored] == [
        None,
        None,
        "too_short",
        None,
        "unknown_language",
        None,
    ]
    with app_client(MEMORY_BUDGET_MB="8192", **models) as client:
        texts = [text for _, text in rows]
        served_auto = client.post("/analyze", json={"texts": texts, "lang": "auto"}).json()["results"]
    for row, expected in zip(scored, served_auto, strict=True):
        if row["lang"] is not None:
            assert_same_prediction(row, expected, row["id"])
            assert row["lang_confidence"] == pytest.approx(expected["lang_confidence"])


@pytest.mark.slow
def test_cli_auto_refuses_one_model_dir_and_fallback_without_auto(tmp_path, onnx_minilm):
    (tmp_path / "t.csv").write_text("id,text\n1,hola que tal\n")
    base = [sys.executable, "-m", "service.scale", "score", "--output", str(tmp_path / "out")]
    base += ["--input", str(tmp_path / "t.csv")]
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing listens there: Ray must not be reached
    cases = {
        "--model names one model": ["--lang", "auto", "--model", str(onnx_minilm)],
        "--fallback is only for --lang auto": ["--fallback", "--model", str(onnx_minilm)],
    }
    for message, args in cases.items():
        result = subprocess.run(base + args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr
