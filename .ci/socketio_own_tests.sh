#!/usr/bin/env bash
# python-socketio's own async and sync server, client and admin tests, from its sdist on the package
# index, run twice: on stock python-socketio, then with durable_adapter's AsyncServer,
# AsyncClient, Server and Client swapped in (recovery off, .ci/socketio_swap.py). The pass/fail sets must match.
# DURABLE_ADAPTER_VENV picks the virtualenv (and so the python-socketio version) to test;
# KEEP_WORK=1 keeps the sdist and the pytest logs (the script prints where).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${DURABLE_ADAPTER_VENV:-$ROOT/.venv}/bin/python
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("python-socketio"))')
work=$(mktemp -d)
[ -z "${KEEP_WORK:-}" ] || echo "python-socketio own tests: work directory $work"
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
pip=("$PY" -m pip -q --disable-pip-version-check)

"${pip[@]}" download --no-binary :all: --no-deps -d "$work" "python-socketio==$version"
tar -xzf "$work"/python_socketio-"$version".tar.gz -C "$work"
src="$work/python_socketio-$version"
tests=()
for name in test_server.py test_client.py test_admin.py; do
  [ -f "$src/tests/async/$name" ] && tests+=("tests/async/$name")
done
if [ "${#tests[@]}" -ne 3 ]; then
  echo "python-socketio $version sdist: expected tests/async/test_{server,client,admin}.py," \
       "found: ${tests[*]:-none}" >&2
  exit 1
fi
sync_tests=()
for name in test_server.py test_client.py; do
  [ -f "$src/tests/common/$name" ] && sync_tests+=("tests/common/$name")
done
if [ "${#sync_tests[@]}" -ne 2 ]; then
  echo "python-socketio $version sdist: expected tests/common/test_{server,client}.py," \
       "found: ${sync_tests[*]:-none}" >&2
  exit 1
fi
# what its tox.ini installs for these tests and our virtualenv lacks, kept out of the venv
"${pip[@]}" install --target "$work/deps" requests websocket-client msgpack

run() {  # run <stock|durable> <outcomes file> <test files...>
  local mode=$1 outcomes=$2
  shift 2
  (cd "$src" && SOCKETIO_SWAP=$mode SOCKETIO_OUTCOMES=$outcomes \
    PYTHONPATH="$ROOT/.ci:$work/deps" "$PY" -m pytest -q -p no:cacheprovider -p no:logging \
    -p socketio_swap --timeout=120 "$@" >"$outcomes.log" 2>&1) || true
}

# The admin tests listen on port 8900, count threads at teardown (they fail under CPU
# load, stock included) and one waits ~45 s for a long-poll: they run alone, and on stock
# only if ours fails something (a test ours passes is no regression).
unit=("${tests[@]:0:2}" "${sync_tests[@]}")
run stock "$work/stock-unit" "${unit[@]}" &
run durable "$work/durable-unit" "${unit[@]}" &
wait
run durable "$work/durable-admin" "${tests[2]}"
if grep -qv '^passed ' "$work/durable-admin"; then
  run stock "$work/stock-admin" "${tests[2]}"
else
  cp "$work/durable-admin" "$work/stock-admin"
fi

status=0
for part in unit admin; do
  for mode in stock durable; do
    if ! grep -q '^passed ' "$work/$mode-$part" 2>/dev/null; then
      echo "python-socketio $version own tests ($mode, $part): no test passed" >&2
      tail -n 30 "$work/$mode-$part.log" >&2
      status=1
    fi
  done
  if ! diff -u "$work/stock-$part" "$work/durable-$part" >&2; then
    echo "python-socketio $version own tests ($part): durable_adapter differs from stock" >&2
    grep -E '^(FAILED|ERROR)' "$work/durable-$part.log" >&2 || true
    status=1
  fi
done
for class in RecoveryOffServer DurableClient RecoveryOffSyncServer DurableSyncClient; do
  built=$(cat "$work"/durable-*.built 2>/dev/null | awk -v c="$class" '$1 == c {n += $2} END {print n + 0}')
  if [ "$built" -eq 0 ]; then
    echo "python-socketio $version own tests: $class never built, the swap did not take" >&2
    status=1
  fi
done
passed=$(cat "$work/durable-unit" "$work/durable-admin" | grep -c '^passed ' || true)
if [ "$status" -eq 0 ]; then
  echo "python-socketio $version own tests: $passed passed with durable_adapter, as on stock"
fi
exit $status
