"""Alembic migrations of the SQL store, run by :mod:`durable_adapter.stores.sql.migrate`
(and by ``alembic upgrade head`` from a checkout, through its ``alembic.ini``)."""
