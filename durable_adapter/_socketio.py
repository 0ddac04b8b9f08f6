"""Every private python-socketio name durable_adapter relies on, in one place.

Checked against python-socketio 5.12.1 and 5.18.1 (CI runs both). When upgrading
python-socketio, re-read these in its source; :func:`check_server_surface` and
:func:`check_manager_surface` fail at import if one disappears.

Server (``socketio.AsyncServer``), overridden or called:
  ``_handle_connect(eio_sid, namespace, data)``   wrapped: restore before, flags after
  ``_handle_disconnect(eio_sid, namespace, reason)``  wrapped: save the session first
  ``_handle_eio_disconnect(eio_sid, reason)``     wrapped: marks an Engine.IO-level close
  ``_send_packet(eio_sid, pkt)``                  wrapped: pid in CONNECT, then the replay
  ``_send_eio_packet(eio_sid, eio_pkt)``          called to send pre-encoded packets
  ``_trigger_event(event, namespace, *args)``     wrapped: skip_middlewares skips 'connect'
  ``environ``, ``packet_class``, ``reason``       read
  ``eio.generate_id``                             wrapped on the instance: restored sid
  ``eio._get_socket(eio_sid).close(wait, reason)``, ``eio.sockets``
                                                  evicting a stale connection (#4880)

Client (``socketio.AsyncClient``), wrapped: ``_send_packet`` (pid and offset in
CONNECT), ``_handle_connect``, ``_handle_event`` (strip the offset, buffer early events),
``_handle_disconnect``, ``_handle_error``, ``_handle_eio_disconnect``; read:
``namespaces``, ``connection_namespaces``, ``eio.queue``, ``eio.state``; and
``engineio.payload.Payload.max_decode_packets`` (raised: a replay in one long-poll).

Manager (``socketio.AsyncManager``), overridden or called:
  ``emit``                                        replaced for recovering namespaces
  ``pre_connect(eio_sid, namespace)`` (5.18+) or ``connect(eio_sid, namespace)`` (<5.18)
                                                  wrapped: the call that mints the sid
  ``basic_enter_room``, ``basic_leave_room``      wrapped: room stays for the replay
                                                  (close_room and disconnects leave through it)
  ``basic_disconnect``, ``get_participants``, ``get_rooms``, ``is_connected``,
  ``sid_from_eio_sid``, ``eio_sid_from_sid``, ``_generate_ack_id``, ``rooms``
"""

from __future__ import annotations

import socketio
from socketio.base_manager import BaseManager

#: 5.18.0 split the manager's connect into pre_connect + connect
HAS_PRE_CONNECT = hasattr(BaseManager, "pre_connect")

SERVER_NAMES = (
    "_handle_connect", "_handle_disconnect", "_handle_eio_disconnect", "_send_packet",
    "_send_eio_packet", "_trigger_event",
)
MANAGER_NAMES = (
    "basic_disconnect", "basic_enter_room", "basic_leave_room", "get_participants", "get_rooms",
    "is_connected", "sid_from_eio_sid", "eio_sid_from_sid", "_generate_ack_id", "connect",
)


def _check(cls: type, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not hasattr(cls, name)]
    if missing:
        raise ImportError(
            f"python-socketio {socketio.__version__ if hasattr(socketio, '__version__') else ''}"
            f" lacks {', '.join(missing)} on {cls.__name__}; durable_adapter supports >=5.12,<6"
        )


def check_server_surface(cls: type) -> None:
    _check(cls, SERVER_NAMES)


def check_manager_surface(cls: type) -> None:
    _check(cls, MANAGER_NAMES)
