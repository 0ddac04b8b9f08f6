"""The plain sync node (``node_app.plain``) as a module-level WSGI app for gunicorn.

``SYNC_STORE`` is the store URL; ``gunicorn -c tests/sync/gunicorn_conf.py`` saves the
sessions when a worker exits, as docs/sync.md shows.
"""

from __future__ import annotations

import os

from tests.sync.node_app import plain

# pings every 5 s, a client gone after 20 s of silence: the test's drops are clean
# closes, and a loaded machine that delays one pong must not close a connection
app, sio = plain(os.environ["SYNC_STORE"], {"ping_interval": 5, "ping_timeout": 20})
