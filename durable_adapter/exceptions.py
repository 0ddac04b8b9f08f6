"""Every error durable_adapter raises derives from :class:`DurableAdapterError`."""


class DurableAdapterError(Exception):
    """Base class of durable_adapter's errors."""


class ConfigurationError(DurableAdapterError, ValueError):
    """A store URL or option that cannot work; the message says what is accepted."""


class StoreError(DurableAdapterError):
    """The store failed (unreachable, refused a write); the driver error is the cause."""


class StartupError(DurableAdapterError):
    """The store could not be opened at start-up; the message is one line naming the fix
    (``durable_adapter: ... run `durable-adapter migrate --store URL```)."""


class SessionDataError(DurableAdapterError, TypeError):
    """A socket's session holds values that cannot be stored (JSON values and bytes only)."""


class ExperimentalWarning(UserWarning):
    """A store whose test suite has not yet run against its real backend (MongoDB)."""
