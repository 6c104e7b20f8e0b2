#!/usr/bin/env bash
# Keep a worker serving: run "$@", and run it again whenever it exits 0 by itself.
#
#   bash service/ops/supervise.sh python -m service.ops.serve main:app --port 8000 ...
#
# A worker exits 0 by itself when it recycles: after --limit-max-requests, or at the memory
# watchdog's hard limit (RECYCLE_ON_HARD_LIMIT, turned on here since this loop restarts it).
# SIGTERM/SIGINT (a deploy) is passed to the worker, which finishes its in-flight requests; the
# loop then ends with the worker's status. Any other exit (a crash, an OOM kill) ends the loop
# too, with that status, for the platform to see and restart. Bash stays resident (~4 MB).
set -uo pipefail

export RECYCLE_ON_HARD_LIMIT="${RECYCLE_ON_HARD_LIMIT:-true}"

# The dashboard's history is a memory-mapped file here, so a recycled worker's successor carries it
# on (service/monitoring/history.py). A private dir per supervisor, removed when the loop ends;
# a HISTORY_DIR set by the operator (a persistent disk) is used as it is and kept.
if [ -z "${HISTORY_DIR:-}" ]; then
  HISTORY_DIR="$(mktemp -d "${TMPDIR:-/tmp}/pysentimiento-history.XXXXXX")"
  export HISTORY_DIR
  trap 'rm -rf "$HISTORY_DIR"' EXIT
fi

stopping=""
child=""
stop() {
  stopping=1
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap stop TERM INT

while :; do
  [ -n "$stopping" ] && exit 0
  "$@" &
  child=$!
  [ -n "$stopping" ] && kill -TERM "$child" 2>/dev/null  # a signal that came before $! was known
  status=0
  # `wait` returns early when a trapped signal arrives; wait again until the worker has exited.
  wait "$child" || status=$?
  while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
  done
  if [ -n "$stopping" ]; then
    # 143: the signal reached a worker still starting, before it could handle it: a clean stop too.
    [ "$status" -eq 143 ] && exit 0
    exit "$status"
  fi
  [ "$status" -ne 0 ] && exit "$status"
  echo "supervise.sh: worker $child exited 0 by itself (recycled); starting a fresh one" >&2
done
