"""The one part of the build that pyproject.toml cannot say: which packages, and where one lives.

The Alembic environment stays in ``migrations/`` at the top of the checkout (so ``alembic
upgrade head`` works there), but is shipped as ``durable_adapter._migrations``: the wheel
installs nothing top-level but ``durable_adapter``, so an application's own ``migrations``
package (Alembic's and Flask-Migrate's default name) can neither shadow nor overwrite ours.
Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

MIGRATIONS = "durable_adapter._migrations"

setup(
    packages=[*find_namespace_packages(include=["durable_adapter", "durable_adapter.*"]),
              MIGRATIONS, f"{MIGRATIONS}.versions"],
    package_dir={MIGRATIONS: "migrations"},
)
