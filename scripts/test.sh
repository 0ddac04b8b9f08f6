#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs everything, starts the services, runs
# pytest (extra arguments go to pytest). SOCKETIO_VERSION=5.12.1 tests another release.
# Tests run on TEST_WORKERS xdist workers (default 5: most of them wait on sockets, timers
# and killed processes, not the CPU; workers steal queued tests from each other, so the
# long SIGKILL loops do not end up queued behind one worker); those marked `serial` (they restart PostgreSQL or
# pause Redis) run afterwards, alone.
source "$(dirname "$0")/_env.sh"
bash "$ROOT/scripts/services.sh"
status=0
"$PY" -m pytest -n "${TEST_WORKERS:-5}" --dist worksteal -m "not serial" "$@" || status=$?
serial=0
"$PY" -m pytest -m serial "$@" || serial=$?
[ "$serial" = 5 ] && serial=0  # 5: the arguments selected no serial test
[ "$status" = 5 ] && [ "$serial" = 0 ] && status=0
[ "$status" = 0 ] && status=$serial
exit "$status"
