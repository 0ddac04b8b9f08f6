"""Which revision a database's tables are at, compared with the revisions this release ships.

Revision ids are namespaced, ``durable_adapter_0001``, ``durable_adapter_0002``... (the
first carries the branch label ``durable_adapter``), so they cannot clash with an
application's own numbered revisions in a shared Alembic history. Releases up to 0.1.0
named them ``0001``...``0005``: a database stamped with one of those ids is at the same
schema, so the check reads it as its new id and an upgrade re-stamps it
(:func:`adopt_legacy_ids`). Only those five ever shipped under the old names; a new
revision just takes the next ``durable_adapter_NNNN``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, table, update

from .schema import VERSION_TABLE

REVISION_PREFIX = "durable_adapter_"

#: The ids of the revisions before they were namespaced -> their ids now.
LEGACY_IDS: dict[str, str] = {f"{n:04d}": f"{REVISION_PREFIX}{n:04d}" for n in range(1, 6)}


@dataclass(frozen=True)
class ShippedRevisions:
    """The revisions of this release: its heads and every id it knows."""

    heads: tuple[str, ...]
    known: frozenset[str]


@cache
def shipped(script_location: str) -> ShippedRevisions:
    """The revisions found at ``script_location`` (read once per process)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    script = ScriptDirectory.from_config(config)
    return ShippedRevisions(
        heads=tuple(script.get_heads()),
        known=frozenset(revision.revision for revision in script.walk_revisions()),
    )


@dataclass(frozen=True)
class SchemaState:
    """The database's revisions (legacy ids read as their new ids) beside the code's."""

    database: tuple[str, ...]
    code: ShippedRevisions
    #: the version table still holds ids from before namespacing
    legacy: bool = False

    @property
    def current(self) -> bool:
        return set(self.database) == set(self.code.heads)

    @property
    def missing(self) -> bool:
        return not self.database

    @property
    def newer(self) -> bool:
        """At a revision this release does not know: a later release migrated it."""
        return any(revision not in self.code.known for revision in self.database)

    def problem(self, where: str, fix: str) -> str | None:
        """One line saying what is wrong with the tables at ``where``, or None when they
        are current; ``fix`` is the command that migrates them."""
        if self.current:
            return None
        if self.missing:
            return f"the tables at {where} are missing; run {fix} first"
        if self.newer:
            return newer_message(where, self)
        return (f"the tables at {where} are at revision {_names(self.database)}, older than "
                f"this release ({_names(self.code.heads)}); run {fix} first")


def newer_message(where: str, state: SchemaState) -> str:
    return (f"the database at {where} is at revision {_names(state.database)}, newer than "
            f"this release ({_names(state.code.heads)}); upgrade durable_adapter or restore "
            "the database from before that upgrade")


def _names(revisions: Iterable[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


def read_state(connection: Connection, schema: str | None,
               code: ShippedRevisions) -> SchemaState:
    """The revision rows of our version table (in ``schema``), against ``code``."""
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema})
    stored = tuple(context.get_current_heads())
    return SchemaState(
        database=tuple(LEGACY_IDS.get(revision, revision) for revision in stored),
        code=code,
        legacy=any(revision in LEGACY_IDS for revision in stored),
    )


def adopt_legacy_ids(connection: Connection, schema: str | None) -> None:
    """Re-stamp a version table holding pre-namespacing ids with the new ones (the same
    schema: only the names changed). Nothing to do on a fresh or re-stamped database."""
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema})
    stored = context.get_current_heads()
    if not any(revision in LEGACY_IDS for revision in stored):
        return
    versions = table(VERSION_TABLE, column("version_num"), schema=schema)
    for old in stored:
        if old in LEGACY_IDS:
            connection.execute(update(versions).where(versions.c.version_num == old)
                               .values(version_num=LEGACY_IDS[old]))
