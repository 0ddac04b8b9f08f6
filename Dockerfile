# The durable-adapter package with its PostgreSQL driver: one image for the demo server
# nodes, the one-shot `migrate` service and the cleanup worker (see docker-compose.yml).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY durable_adapter ./durable_adapter
RUN pip install ".[postgres,metrics]" && useradd --system --no-create-home durable

USER durable
WORKDIR /tmp
CMD ["durable-adapter", "--help"]
