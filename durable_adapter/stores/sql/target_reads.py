"""The SQL store's reads of the target index: many ``(namespace, target, range)`` in
one statement, each range its own index scan with its own limit.

PostgreSQL gets the ranges as arrays and scans each in a ``LATERAL`` subquery (one
statement text for any number of ranges, prepared once). SQLite has no ``LATERAL``: each
range is a subquery with its own ``ORDER BY seq LIMIT``, joined by ``UNION ALL``. Either
way the index ``(namespace, target, seq)`` finds each range's first row and reads on in
seq order, and only those packets' rows are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.engine import Dialect

from ..targets import TargetRange
from .append import _qualified
from .schema import packet_targets, packets

_COLUMNS = "p.seq, p.namespace, p.payload, p.rooms, p.except_rooms, p.created_at"


def postgres_query(dialect: Dialect, schema: str | None) -> TextClause:
    """Its parameters are :func:`postgres_params`'."""
    index = _qualified(packet_targets, dialect, schema)
    table = _qualified(packets, dialect, schema)
    return text(f"""
SELECT r.i, {_COLUMNS}
FROM unnest(CAST(:namespaces AS text[]), CAST(:targets AS text[]),
            CAST(:afters AS bigint[]), CAST(:untils AS bigint[]), CAST(:limits AS bigint[]))
        WITH ORDINALITY AS r(namespace, target, after, until, lim, i)
    CROSS JOIN LATERAL (
        SELECT t.seq FROM {index} AS t
        WHERE t.namespace = r.namespace AND t.target = r.target
            AND t.seq > r.after AND t.seq <= r.until
        ORDER BY t.seq LIMIT r.lim
    ) AS u
    JOIN {table} AS p ON p.seq = u.seq""")


def postgres_params(ranges: Sequence[TargetRange]) -> dict[str, Any]:
    return {"namespaces": [r.namespace for r in ranges], "targets": [r.target for r in ranges],
            "afters": [r.after for r in ranges], "untils": [r.until for r in ranges],
            "limits": [r.limit for r in ranges]}


def sqlite_query(dialect: Dialect, ranges: Sequence[TargetRange]
                 ) -> tuple[TextClause, dict[str, Any]]:
    """The statement for ``ranges`` (numbered from 1, as PostgreSQL's ordinality) and
    its parameters."""
    index = _qualified(packet_targets, dialect, None)
    table = _qualified(packets, dialect, None)
    parts: list[str] = []
    params: dict[str, Any] = {}
    for i, wanted in enumerate(ranges, 1):
        parts.append(
            f"SELECT i, seq FROM (SELECT {i} AS i, seq FROM {index}"
            f" WHERE namespace = :n{i} AND target = :t{i} AND seq > :a{i} AND seq <= :b{i}"
            f" ORDER BY seq LIMIT {int(wanted.limit)})")
        params.update({f"n{i}": wanted.namespace, f"t{i}": wanted.target,
                       f"a{i}": wanted.after, f"b{i}": wanted.until})
    union = " UNION ALL ".join(parts)
    return text(f"SELECT u.i, {_COLUMNS} FROM ({union}) AS u"
                f" JOIN {table} AS p ON p.seq = u.seq"), params
