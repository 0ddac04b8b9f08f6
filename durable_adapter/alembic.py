"""Keep durable_adapter's tables out of an application's ``alembic revision --autogenerate``.

The SQL store's tables (and its own version table) all start with ``durable_adapter_``;
they are created and upgraded by our migrations, so an application's models never list
them, and autogenerate would propose dropping them. In the application's ``env.py``::

    import durable_adapter.alembic

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=durable_adapter.alembic.include_name,
    )

``include_name`` skips the tables before they are reflected; ``include_object`` does the
same for Alembic's other hook, if the application already filters objects there. Either
is enough; to combine one with a filter of your own::

    def include_name(name, type_, parent_names):
        return durable_adapter.alembic.include_name(name, type_, parent_names) and ...

With ``include_schemas=True`` and the store in a schema of its own, leave that schema out
by name in your filter (``type_ == "schema"``). Nothing here imports Alembic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["TABLE_PREFIX", "include_name", "include_object", "is_ours"]

#: Every table durable_adapter creates starts with this (its version table included).
TABLE_PREFIX = "durable_adapter_"

_TABLE_LEVEL = ("column", "index", "unique_constraint", "foreign_key_constraint")


def is_ours(table_name: str | None) -> bool:
    """True for the name of a table durable_adapter creates."""
    return bool(table_name) and str(table_name).startswith(TABLE_PREFIX)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name`` hook: False for our tables and everything on them."""
    if type_ == "table":
        return not is_ours(name)
    if type_ in _TABLE_LEVEL:
        return not is_ours(parent_names.get("table_name"))
    return True


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """Alembic's ``include_object`` hook: False for our tables and everything on them."""
    if type_ == "table":
        return not is_ours(name)
    table = getattr(obj, "table", None)
    return not is_ours(getattr(table, "name", None))
