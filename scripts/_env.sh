# Sourced by the scripts: a virtualenv with durable_adapter and its test tools installed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${DURABLE_ADAPTER_VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
if [ -n "${SOCKETIO_VERSION:-}" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "python-socketio==$SOCKETIO_VERSION"
fi
PY="$VENV/bin/python"
