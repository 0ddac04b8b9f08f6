"""Alembic migrations of the SQL store, shipped inside the wheel (see durable_adapter.migrate)."""
