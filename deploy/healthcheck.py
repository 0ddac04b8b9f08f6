"""Container healthcheck of a server node: exit 0 when the Socket.IO endpoint on
127.0.0.1:$DURABLE_ADAPTER_PORT (default 8000) answers an Engine.IO handshake, else 1.

The image's HEALTHCHECK runs it (``python /usr/local/bin/durable-adapter-healthcheck``);
docker-compose.yml runs ``durable-adapter check`` before it, for the store. Standard
library only, one short-lived request pair: the handshake, then a close of the session it
opened, so probes do not pile up sessions until their ping timeout.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 3.0  # seconds per request; the HEALTHCHECK's own timeout is longer
PATH = os.environ.get("DURABLE_ADAPTER_HEALTHCHECK_PATH", "/socket.io/")


def endpoint(port: str) -> str:
    return f"http://127.0.0.1:{port}{PATH}?EIO=4&transport=polling"


def handshake(url: str) -> str:
    """The sid of the Engine.IO session the server opened; raises if none was."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        body = response.read(4096).decode("utf-8", "replace")
    if not body.startswith("0{"):  # an OPEN packet: "0" then the handshake JSON
        raise ValueError(f"not an Engine.IO handshake: {body[:60]!r}")
    return str(json.loads(body[1:])["sid"])


def close(url: str, sid: str) -> None:
    request = urllib.request.Request(f"{url}&sid={sid}", data=b"1", method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT):
        pass


def main() -> int:
    url = endpoint(os.environ.get("DURABLE_ADAPTER_PORT") or "8000")
    try:
        sid = handshake(url)
    except (OSError, ValueError, KeyError) as exc:  # URLError and timeouts are OSErrors
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    try:
        close(url, sid)
    except OSError:
        pass  # the node answered; its session expires by itself
    print(f"healthy: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
