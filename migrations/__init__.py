"""Alembic migrations of the SQL store: ``durable_adapter._migrations`` once installed
(setup.py maps this folder there; see durable_adapter.migrate)."""
