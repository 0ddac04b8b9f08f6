#!/usr/bin/env bash
# The demo: a chat page on http://127.0.0.1:8000 served with recovery on the SQLite default.
source "$(dirname "$0")/_env.sh"
exec "$VENV/bin/durable-adapter" demo "$@"
