#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs everything, starts the services, runs
# pytest (extra arguments go to pytest). SOCKETIO_VERSION=5.12.1 tests another release.
source "$(dirname "$0")/_env.sh"
bash "$ROOT/scripts/services.sh"
exec "$PY" -m pytest "$@"
