"""Alembic migrations of the SQL store, run by :mod:`durable_adapter.stores.sql.migrate`
(and by ``alembic upgrade head`` from a checkout, through its ``alembic.ini``, or from an
application's ini with ``script_location = durable_adapter.stores.sql:migrations``).

A new revision follows the pattern of ``versions/``: the file ``NNNN_what.py``, the id
``durable_adapter_NNNN`` revising the previous ``durable_adapter_NNNN`` (ids are namespaced
so they never clash with an application's own; the branch label ``durable_adapter`` sits
on the first), every operation given ``schema=store_schema()`` from :mod:`.target`, and
the same change in ``stores/sql/schema.py`` (the migration tests compare the two).
"""
