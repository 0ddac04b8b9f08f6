"""The plain sync node (``node_app.plain``) as a module-level WSGI app for gunicorn.

``SYNC_STORE`` is the store URL; ``gunicorn -c tests/sync/gunicorn_conf.py`` saves the
sessions when a worker exits, as docs/sync.md shows.
"""

from __future__ import annotations

import os

from tests.sync.node_app import plain

app, sio = plain(os.environ["SYNC_STORE"])
