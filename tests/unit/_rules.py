"""Where the unit tests find the store's take rules: the one line to change if they move.

``decide_take`` and ``decide_takes`` live in ``durable_adapter/stores/rules.py``; every
unit test imports them from here.
"""

from durable_adapter.stores.base import OwnedBy, TakeRequest
from durable_adapter.stores.rules import MINE, TAKE, decide_take, decide_takes

__all__ = ["MINE", "TAKE", "OwnedBy", "TakeRequest", "decide_take", "decide_takes"]
