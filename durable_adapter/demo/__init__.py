"""A chat page showing connection state recovery: ``durable-adapter demo``."""
