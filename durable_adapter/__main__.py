"""``python -m durable_adapter``: the ``durable-adapter`` command."""

import sys

from .cli import main

sys.exit(main())
