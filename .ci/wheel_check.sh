#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel, install the wheel into a
# fresh virtualenv outside the checkout, and use it from an application folder whose own
# `migrations` package raises when imported (our Alembic environment must be found inside
# durable_adapter, never by that name). Needs PostgreSQL reachable through libpq (psql).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
BUILD_PY=${BUILD_PY:-$ROOT/.venv/bin/python}  # has `build` (the test extra)
WORK=$(mktemp -d /tmp/wheel_check.XXXXXX)
DB="wheel_check_$$"
DEMO_PID=""

cleanup() {
  [ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null && wait "$DEMO_PID" 2>/dev/null
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS ${DB}_dba" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { echo "wheel check: $*"; }
fail() { echo "wheel check FAILED: $*" >&2; exit 1; }
quiet() { "$@" >"$WORK/cmd.log" 2>&1 || { cat "$WORK/cmd.log"; fail "$*"; }; }

step "building the sdist and the wheel"
"$BUILD_PY" -m build -q --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; fail "python -m build"; }
WHEEL=$(ls "$WORK"/dist/*.whl)
SDIST=$(ls "$WORK"/dist/*.tar.gz)

step "the wheel installs nothing top-level but durable_adapter"
"$PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/", 1)[0] for n in names}
stray = {t for t in tops if t != "durable_adapter" and not t.endswith(".dist-info")}
assert not stray, f"top-level names besides durable_adapter: {sorted(stray)}"
MIGRATIONS = "durable_adapter/stores/sql/migrations"
for needed in (f"{MIGRATIONS}/env.py", f"{MIGRATIONS}/script.py.mako",
               "durable_adapter/py.typed", "durable_adapter/demo/index.html"):
    assert needed in names, f"{needed} missing from the wheel"
assert any(n.startswith(f"{MIGRATIONS}/versions/0001") for n in names)
EOF

step "the Dockerfile's COPY sources alone build the same package"
mkdir "$WORK/docker"
grep '^COPY ' "$ROOT/Dockerfile" | while read -r _ line; do
  read -ra parts <<<"$line"
  for source in "${parts[@]:0:${#parts[@]}-1}"; do cp -r "$ROOT/$source" "$WORK/docker/"; done
done
quiet "$BUILD_PY" -m build --wheel --outdir "$WORK/docker/dist" "$WORK/docker"
"$PY" - "$WHEEL" "$WORK"/docker/dist/*.whl <<'PYEOF'
import sys, zipfile
released, image = ({n for n in zipfile.ZipFile(w).namelist() if ".dist-info/" not in n}
                   for w in sys.argv[1:])
assert released == image, f"the image's wheel differs: {sorted(released ^ image)}"
PYEOF

step "the sdist holds every tracked file (tests, scripts, README...)"
mkdir "$WORK/sdist"
tar xzf "$SDIST" -C "$WORK/sdist"
SRC=$(ls -d "$WORK"/sdist/*/)
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  missing=$(git -C "$ROOT" ls-files | grep -v -e '^\.ci/' -e '^\.gitignore$' \
    | while read -r f; do [ -e "$SRC/$f" ] || echo "$f"; done)
  [ -z "$missing" ] || fail "files missing from the sdist: $missing"
fi
for f in README.md tests/conformance/test_recovery.py scripts/test.sh alembic.ini \
    durable_adapter/stores/sql/migrations/env.py; do
  [ -e "$SRC/$f" ] || fail "$f missing from the sdist"
done

step "installing the wheel into a fresh virtualenv"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL[postgres]" \
  2>&1 | grep -v "^WARNING: Location" || true
"$WORK/venv/bin/python" -c "import durable_adapter" || fail "the wheel did not install"
BIN="$WORK/venv/bin"

# the application: its own migrations package, importable as the app's code would be
APP="$WORK/app"
mkdir -p "$APP/migrations"
echo 'raise RuntimeError("the application'"'"'s own migrations package was imported")' \
  >"$APP/migrations/__init__.py"
cat >"$APP/at_head.py" <<'EOF'
"""Exit 1 unless the SQL store at argv[1] has its tables at the head revision."""
import asyncio, sys
from durable_adapter.stores.sql.migrate import is_current
from durable_adapter.stores.sql.dialect import create_engine, parse_url

async def main(url: str) -> bool:
    engine = create_engine(parse_url(url))
    try:
        return await is_current(engine)
    finally:
        await engine.dispose()

sys.exit(0 if asyncio.run(main(sys.argv[1])) else 1)
EOF
cat >"$APP/open_store.py" <<'EOF'
"""Open and close the store at argv[1] (SQLite migrates at open), as an application would."""
import asyncio, sys
from durable_adapter.stores import store_from_url

async def main(url: str) -> None:
    store = store_from_url(url)
    await store.open()
    await store.close()

asyncio.run(main(sys.argv[1]))
EOF
cd "$APP"
export PYTHONPATH="$APP"
if "$BIN/python" -c "import migrations" 2>/dev/null; then
  fail "the application's migrations package should raise when imported"
fi

step "durable-adapter migrate on SQLite"
quiet "$BIN/durable-adapter" migrate --store "sqlite+aiosqlite:///$APP/cli.db"
"$BIN/python" at_head.py "sqlite+aiosqlite:///$APP/cli.db" || fail "cli.db not at head"

step "durable-adapter migrate on PostgreSQL (database $DB)"
quiet psql -X -q -d postgres -c "CREATE DATABASE $DB"
quiet "$BIN/durable-adapter" migrate --store "postgresql+asyncpg:///$DB"
"$BIN/python" at_head.py "postgresql+asyncpg:///$DB" || fail "$DB not at head"

step "python -m durable_adapter migrate"
quiet "$BIN/python" -m durable_adapter migrate --store "sqlite+aiosqlite:///$APP/module.db"
"$BIN/python" at_head.py "sqlite+aiosqlite:///$APP/module.db" || fail "module.db not at head"

step "our migrations from the application's own alembic.ini (no logging sections)"
printf '[durable_adapter]\nscript_location = durable_adapter.stores.sql:migrations\nsqlalchemy.url = sqlite:///%s\n' \
  "$APP/ini.db" >"$APP/alembic.ini"
quiet "$BIN/alembic" -n durable_adapter upgrade head
"$BIN/python" at_head.py "sqlite+aiosqlite:///$APP/ini.db" || fail "ini.db not at head"

step "durable-adapter migrate --sql, applied by sqlite3 and psql"
"$BIN/durable-adapter" migrate --store "sqlite:///$APP/dba.db" --sql >"$WORK/sqlite.sql" \
  || fail "migrate --sql (sqlite)"
quiet sqlite3 "$APP/dba.db" ".read $WORK/sqlite.sql"
"$BIN/python" at_head.py "sqlite+aiosqlite:///$APP/dba.db" || fail "dba.db not at head"
"$BIN/durable-adapter" migrate --store "postgresql://dba@db.invalid/app" --sql \
  >"$WORK/pg.sql" || fail "migrate --sql (postgresql)"
quiet psql -X -q -d postgres -c "CREATE DATABASE ${DB}_dba"
quiet psql -X -q -v ON_ERROR_STOP=1 -d "${DB}_dba" -f "$WORK/pg.sql"
"$BIN/python" at_head.py "postgresql+asyncpg:///${DB}_dba" || fail "${DB}_dba not at head"

step "opening the SQLite store from a script"
quiet "$BIN/python" open_store.py "sqlite+aiosqlite:///$APP/opened.db"
"$BIN/python" at_head.py "sqlite+aiosqlite:///$APP/opened.db" || fail "opened.db not at head"

step "durable-adapter demo serves its page"
"$BIN/durable-adapter" demo --port 0 >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
URL=""
for _ in $(seq 1 300); do  # up to 30 s for the "running on URL" line
  URL=$(grep -o 'http://[^ ]*/' "$WORK/demo.log" | head -n 1 || true)
  [ -n "$URL" ] && break
  kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.log"; fail "the demo exited"; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$WORK/demo.log"; fail "the demo did not start within 30 s"; }
curl -fsS --max-time 10 -o "$WORK/page.html" "$URL" || fail "fetching the demo page at $URL"
grep -q "socket.io" "$WORK/page.html" || fail "the demo page at $URL is not the chat page"
kill "$DEMO_PID" && wait "$DEMO_PID" || true
DEMO_PID=""
unset PYTHONPATH

step "alembic upgrade head from the unpacked sdist (docs/operations.md's checkout command)"
(cd "$SRC" && quiet "$BIN/alembic" -x "url=sqlite+aiosqlite:///$WORK/alembic.db" upgrade head)
"$BIN/python" "$APP/at_head.py" "sqlite+aiosqlite:///$WORK/alembic.db" || fail "alembic.db not at head"

step "passed"
