"""The compiled methods of dataclasses, kept from the build to every start as .pyc files keep modules.

`@dataclass` writes each class's `__init__`, `__repr__`, `__eq__`, ... as source text and compiles
it when the class is defined: ~400 functions on the server's path to its first answer (pydantic,
FastAPI, anyio, annotated_types and the app's own), 0.028 s of CPU at full speed, ~0.3 s of waiting
at Render's 0.1 CPU, for the same texts at every start (MEMORY.md, issue 22). The build records
the code of those texts (`python -m service.dataclass_code`, run by `start.sh install`) in
`service/__pycache__`, under this Python's bytecode magic; the server command installs it before
it imports anything (service/ops/serve.py), and a text that is not there is compiled as before.
No file, another Python's or a corrupt one: every text is compiled, as without it.
"""

import builtins
import dataclasses
import importlib
import importlib.util
import marshal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import CodeType
from typing import Any

CACHE = Path(__file__).parent / "__pycache__" / f"dataclass-code.{sys.implementation.cache_tag}.marshal"
MAGIC = b"dataclass-code\0" + importlib.util.MAGIC_NUMBER
# What the server imports before its first answer (service/ops/serve.py, main.py, the onnx backend).
SERVER_PATH = ("uvicorn.main", "main", "service.sentiment.backends.onnx_backend")

_codes: dict[str, CodeType] = {}  # found in the cache, or compiled by this process
stats = {"found": 0, "compiled": 0}


def install(path: Path = CACHE) -> int:
    """Compile dataclass methods through the codes recorded at `path`; how many it holds."""
    _codes.update(_read(path))
    dataclasses.exec = _exec  # type: ignore[attr-defined]  # its global `exec` is looked up before the builtin
    return len(_codes)


def _read(path: Path) -> dict[str, CodeType]:
    try:
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            return {}
        codes = marshal.loads(data[len(MAGIC) :])
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(codes, dict):
        return {}
    return {text: code for text, code in codes.items() if _valid(text, code)}


def _valid(text: object, code: object) -> bool:
    return isinstance(text, str) and isinstance(code, CodeType)


def _exec(source: Any, globals: dict[str, Any] | None = None, locals: dict[str, Any] | None = None) -> None:
    """`exec` as dataclasses calls it, with the code of a text compiled once per build."""
    if isinstance(source, str):
        code = _codes.get(source)
        if code is None:
            # What exec(source) compiles: "<string>", and no __future__ flags from this module.
            code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
            stats["compiled"] += 1
        else:
            stats["found"] += 1
        source = code
    builtins.exec(source, globals, locals)


def record(modules: Sequence[str], path: Path = CACHE) -> int:
    """Import `modules` and write the code of every dataclass text seen so far to `path` (atomically);
    how many."""
    install(path)
    for module in modules:
        importlib.import_module(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(f".{id(path)}.tmp")
    temp.write_bytes(MAGIC + marshal.dumps(dict(_codes)))
    temp.replace(path)
    return len(_codes)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # not on the server's path

    parser = argparse.ArgumentParser(
        prog="python -m service.dataclass_code", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=CACHE)
    parser.add_argument(
        "modules", nargs="*", default=list(SERVER_PATH), help="what to import (the server's path)"
    )
    args = parser.parse_args(argv)
    if "pydantic" in sys.modules:  # `import service` read settings: start.sh's environment pins without them
        print("dataclass code: pydantic was imported before: its classes are not recorded", file=sys.stderr)
    count = record(args.modules, args.out)
    print(f"dataclass code: {count} compiled methods recorded in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
