"""Every private python-socketio (and python-engineio) name durable_adapter relies on.

Checked against python-socketio 5.12.1 and 5.18.1 (CI runs both). When upgrading, re-read
these in its source. The ``check_*_surface`` functions run at import and look at
python-socketio's own classes (our subclasses define these methods themselves, so
checking them would prove nothing): a name that disappears fails the import loudly.

Server (``socketio.AsyncServer``), overridden or called:
  ``_handle_eio_connect(eio_sid, environ)``       wrapped: starts the store first
  ``_handle_connect(eio_sid, namespace, data)``   wrapped: restore before, flags after
  ``_handle_disconnect(eio_sid, namespace, reason)``  wrapped: save the session first
  ``_handle_eio_disconnect(eio_sid, reason)``     wrapped: marks an Engine.IO-level close
  ``_send_packet(eio_sid, pkt)``                  wrapped: pid in CONNECT, then the replay
  ``_send_eio_packet(eio_sid, eio_pkt)``          wrapped: a frame written straight to
                                                  the websocket (``_direct``); called to
                                                  send pre-encoded packets
  ``_trigger_event(event, namespace, *args)``     wrapped: skip_middlewares skips 'connect'
  ``environ``, ``packet_class``, ``reason``       read
  ``eio.generate_id``                             wrapped on the instance: restored sid
  ``eio.sockets[eio_sid]``: ``closing``, ``closed``, ``upgraded``, ``queue``,
  ``close(wait, reason)``                         a connection is open; a taken-over one
                                                  is closed for good (#4880)

Client (``socketio.AsyncClient``), wrapped: ``_send_packet`` (pid and offset in
CONNECT; flush after DISCONNECT), ``_handle_connect``, ``_handle_event`` (strip the
offset, hold early events), ``_handle_disconnect``, ``_handle_error``,
``_handle_eio_disconnect``; read: ``namespaces``, ``connection_namespaces``,
``eio.state``, ``eio.queue`` (engineio's send queue, see :func:`engineio_send_queue`);
and ``engineio.async_client.payload`` (see ``_payload_limit``).

Sync client (``socketio.Client``), wrapped: the same hooks as the async client's; on its
``engineio.Client`` instance: ``_trigger_event`` ('message' routed to one ordered
thread), ``start_background_task`` (the read loop with the raised payload limit),
``queue.unfinished_tasks`` and ``state`` read; and ``engineio.client.payload``.

Sync server (``socketio.Server``): ``_handle_eio_connect``, ``_handle_eio_message``,
``_handle_eio_disconnect`` handed to the core; ``_trigger_event`` called from the
core's threads; ``environ``, ``handlers``, ``namespace_handlers``, ``not_handled``
shared with it. Its ``engineio.Server``: ``sockets``, ``send_packet``,
``get_session``, ``save_session``, ``disconnect``, ``shutdown``, ``generate_id``, and
each socket's ``close(wait, abort, reason)``, ``closing``, ``closed``.

Manager (``socketio.AsyncManager``), overridden or called:
  ``emit``                                        replaced for recovering namespaces
  ``pre_connect(eio_sid, namespace)`` (5.18+) or ``connect(eio_sid, namespace)`` (<5.18)
                                                  wrapped: the call that mints the sid
  ``basic_enter_room``, ``basic_leave_room``      wrapped: room stays for the replay
                                                  (close_room and disconnects leave through it)
                                                  and a take-over's detach / reattach
  ``basic_disconnect``, ``disconnect``, ``get_participants``, ``get_rooms``,
  ``is_connected``, ``sid_from_eio_sid``, ``eio_sid_from_sid``, ``_generate_ack_id``,
  ``rooms``
"""

from __future__ import annotations

import asyncio
import inspect
import types
from typing import Any

import engineio
import engineio.async_client
import engineio.client
import socketio
from socketio.base_manager import BaseManager

#: 5.18.0 split the manager's connect into pre_connect + connect
HAS_PRE_CONNECT = hasattr(BaseManager, "pre_connect")

SERVER_NAMES = (
    "_handle_eio_connect", "_handle_connect", "_handle_disconnect", "_handle_eio_disconnect",
    "_send_packet", "_send_eio_packet", "_trigger_event",
)
ENGINEIO_SERVER_NAMES = ("generate_id", "_get_socket")
CLIENT_NAMES = (
    "connect", "disconnect", "_send_packet", "_handle_connect", "_handle_event",
    "_handle_disconnect", "_handle_error", "_handle_eio_disconnect",
)
MANAGER_COROUTINES = ("emit", "pre_connect" if HAS_PRE_CONNECT else "connect")
MANAGER_NAMES = (
    *MANAGER_COROUTINES, "basic_disconnect", "basic_enter_room", "basic_leave_room",
    "get_participants", "get_rooms", "is_connected", "sid_from_eio_sid", "eio_sid_from_sid",
    "_generate_ack_id", "set_server",
)


def _check(cls: type, names: tuple[str, ...], coroutines: tuple[str, ...] = ()) -> None:
    """Every name exists on ``cls``; those we await are coroutine functions there (a
    synchronous base-class stub raising NotImplementedError does not count)."""
    missing = [name for name in names if not hasattr(cls, name) or (
        name in coroutines and not inspect.iscoroutinefunction(getattr(cls, name)))]
    if missing:
        version = getattr(socketio, "__version__", "")
        raise ImportError(
            f"python-socketio {version} lacks {', '.join(missing)} on {cls.__module__}."
            f"{cls.__qualname__}; durable_adapter supports >=5.12,<6")


def check_server_surface() -> None:
    _check(socketio.AsyncServer, SERVER_NAMES, coroutines=SERVER_NAMES)
    _check(engineio.AsyncServer, ENGINEIO_SERVER_NAMES)


def check_client_surface() -> None:
    _check(socketio.AsyncClient, CLIENT_NAMES, coroutines=CLIENT_NAMES)
    payload = getattr(engineio.async_client, "payload", None)
    if not isinstance(payload, types.ModuleType) or not hasattr(payload, "Payload"):
        raise ImportError("python-engineio's async client no longer decodes through "
                          "engineio.async_client.payload.Payload; see _payload_limit")


SYNC_CLIENT_NAMES = CLIENT_NAMES[1:]  # connect is not wrapped
SYNC_SERVER_NAMES = ("_handle_eio_connect", "_handle_eio_message", "_handle_eio_disconnect",
                     "_trigger_event")
ENGINEIO_SYNC_SERVER_NAMES = ("sockets", "send_packet", "get_session", "save_session",
                              "disconnect", "shutdown", "generate_id")


def check_sync_client_surface() -> None:
    _check(socketio.Client, SYNC_CLIENT_NAMES)
    _check(engineio.Client, ("_trigger_event", "start_background_task"))
    payload = getattr(engineio.client, "payload", None)
    if not isinstance(payload, types.ModuleType) or not hasattr(payload, "Payload"):
        raise ImportError("python-engineio's client no longer decodes through "
                          "engineio.client.payload.Payload; see _payload_limit")


def check_sync_server_surface() -> None:
    _check(socketio.Server, SYNC_SERVER_NAMES)
    _check(engineio.Server, tuple(n for n in ENGINEIO_SYNC_SERVER_NAMES if n != "sockets"))


def route_engineio_messages(eio: Any, receive: Any) -> None:
    """python-engineio's sync client runs each 'message' handler in a thread of its own
    (``_trigger_event(..., run_async=True)``), in no set order: hand messages to
    ``receive`` instead, called in its read loop's thread, in arrival order."""
    trigger = eio._trigger_event

    def _trigger_event(event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message":
            return receive(*args)
        return trigger(event, *args, **kwargs)

    eio._trigger_event = _trigger_event


def wrap_engineio_tasks(eio: Any, wrap: Any) -> None:
    """Every background task of the sync ``eio`` client (its read loop among them) runs
    its target through ``wrap``."""
    start = eio.start_background_task

    def start_background_task(target: Any, *args: Any, **kwargs: Any) -> Any:
        return start(wrap(target), *args, **kwargs)

    eio.start_background_task = start_background_task


def check_manager_surface() -> None:
    _check(socketio.AsyncManager, MANAGER_NAMES, coroutines=MANAGER_COROUTINES)


def engineio_send_queue(eio: Any) -> asyncio.Queue[Any] | None:
    """The send queue of a connected python-engineio client, else None.

    python-engineio has no public flush: its send queue (an ``asyncio.Queue`` whose writer
    calls ``task_done``) is the only way to know that queued packets went out. Anything
    else (another engineio, a test double) gives None: packets then go out as they would
    with python-socketio.
    """
    queue = getattr(eio, "queue", None)
    if getattr(eio, "state", None) != "connected" or not isinstance(queue, asyncio.Queue):
        return None
    return queue


async def queued_send(server: Any, eio_sid: str, eio_pkt: Any) -> None:
    """python-socketio's own ``_send_eio_packet`` (through python-engineio's queue), past
    our override that first tries a direct write (``_direct``)."""
    await socketio.AsyncServer._send_eio_packet(server, eio_sid, eio_pkt)
