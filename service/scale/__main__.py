"""`python -m service.scale score ...` (Ray Data) and `python -m service.scale serve ...` (Ray Serve).

Both start a local Ray cluster (`--num-cpus`), or join an existing one with `--address` or
RAY_ADDRESS (what `ray job submit` sets). The service's settings come from the environment as
for the plain server (MODEL_*, ONNX_DIR, MAX_TEXT_CHARS...) and are passed on to every worker.
"""

import argparse
import json
import sys
from collections.abc import Callable
from typing import get_args

from service.config import LANGS, TASKS
from service.exceptions import ServiceError
from service.scale.files import InputFormat, OutputFormat


def actor_range(text: str) -> tuple[int, int]:
    """`4` is a fixed pool of 4 actors, `1-4` a pool that grows from 1 to 4 as work waits."""
    low, _, high = text.partition("-")
    try:
        pool = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or MIN-MAX") from None
    if not 1 <= pool[0] <= pool[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 1 <= MIN <= MAX")
    return pool


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
        return value

    return parse


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--address",
        help="an existing Ray cluster (`auto`, `HOST:6379`, `ray://HOST:10001`); default: RAY_ADDRESS, "
        "else a local cluster",
    )
    group.add_argument("--num-cpus", type=positive(int), help="CPUs of the local cluster (default: all)")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m service.scale", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)

    score = commands.add_parser(
        "score",
        help="score CSV, JSONL or Parquet files on Ray Data",
        description="Score every row of CSV, JSONL or Parquet files into Parquet or JSON Lines files: "
        "the id column, label, probas, and an error for each row that cannot be analyzed.",
    )
    score.add_argument(
        "--input",
        dest="inputs",
        action="append",
        required=True,
        metavar="PATH",
        help="a file, a directory or a glob (`data/**/*.csv`), local or a URI (`s3://bucket/tweets/`); "
        "repeatable",
    )
    score.add_argument("--output", required=True, help="the directory to write (local or a URI)")
    score.add_argument(
        "--format", dest="input_format", choices=get_args(InputFormat), help="default: from names"
    )
    score.add_argument("--output-format", choices=get_args(OutputFormat), default="parquet")
    score.add_argument("--text-column", default="text")
    score.add_argument("--id-column", help="a column copied to each output row, to match rows")
    score.add_argument("--task", choices=TASKS, help="default: DEFAULT_TASK")
    score.add_argument(
        "--lang",
        choices=(*LANGS, "auto"),
        help="default: DEFAULT_LANG; `auto`: each row read by the model of its own language (every "
        "language of the task needs its model: MODEL_<TASK>_<LANG> or ONNX_DIR)",
    )
    score.add_argument(
        "--fallback",
        action="store_true",
        help="with --lang auto: a row whose language cannot be told is read by DEFAULT_LANG's model",
    )
    score.add_argument(
        "--model", help="an exported model dir on every node; default: MODEL_<TASK>_<LANG> or ONNX_DIR"
    )
    score.add_argument(
        "--actors",
        type=actor_range,
        help="N actors, or MIN-MAX to autoscale (default: 1 up to the cluster's CPUs / --cpus-per-actor)",
    )
    score.add_argument("--cpus-per-actor", type=positive(float), default=1.0, help="also its NUM_THREADS")
    score.add_argument(
        "--memory-mb",
        type=positive(int),
        default=1024,
        help="memory Ray reserves per actor, and its MEMORY_BUDGET_MB",
    )
    score.add_argument("--batch-size", type=positive(int), default=256, help="rows per actor call")
    score.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    _cluster_arguments(score)

    serve = commands.add_parser(
        "serve",
        help="serve the API on Ray Serve",
        description="The service's FastAPI app on Ray Serve: the same routes, schemas and errors, in "
        "replicas that each keep the memory budget. Runs until interrupted.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="where Serve's HTTP proxy listens")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--replicas", type=positive(int), default=1, help="a fixed number of replicas")
    serve.add_argument(
        "--autoscale",
        type=actor_range,
        metavar="MIN-MAX",
        help="autoscale between MIN and MAX replicas instead of --replicas",
    )
    serve.add_argument(
        "--target-ongoing-requests",
        type=positive(float),
        default=8,
        help="autoscaling adds replicas when each has more requests than this in flight",
    )
    serve.add_argument(
        "--max-ongoing-requests",
        type=positive(int),
        default=32,
        help="requests one replica takes at once (its micro-batching needs company)",
    )
    serve.add_argument("--cpus-per-replica", type=positive(float), default=1.0, help="also its NUM_THREADS")
    serve.add_argument(
        "--memory-mb",
        type=positive(int),
        default=1024,
        help="memory Ray reserves per replica, and its MEMORY_BUDGET_MB",
    )
    _cluster_arguments(serve)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from service.scale.cluster import connect

    try:
        if args.command == "score":
            from service.scale.score import ScoreOptions, score

            options = ScoreOptions(
                **{
                    name: getattr(args, name)
                    for name in ScoreOptions.__dataclass_fields__
                    if name != "filesystem"
                }
            )
            print(json.dumps(score(options, args.address, args.num_cpus), ensure_ascii=False))
            return 0
        from service.scale.serve import ServeOptions, run

        options = ServeOptions(**{name: getattr(args, name) for name in ServeOptions.model_fields})
        connect(args.address, args.num_cpus)
        run(options)
        return 0
    except (ServiceError, FileNotFoundError, ValueError) as error:
        print(f"python -m service.scale {args.command}: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
