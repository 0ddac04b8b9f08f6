# The durable-adapter package with its PostgreSQL driver: one image for the demo server
# nodes, the one-shot `migrate` service and the cleanup worker (see docker-compose.yml).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DURABLE_ADAPTER_PORT=8000

# pip extras of durable-adapter to install: `docker build --build-arg EXTRAS=redis,metrics .`
ARG EXTRAS=postgres,metrics

WORKDIR /src
# the dependencies first, read from pyproject.toml alone: this layer is rebuilt when they
# (or EXTRAS) change, not at every change of the code below
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]]))" \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# the package itself, its dependencies already there
COPY README.md LICENSE ./
COPY durable_adapter ./durable_adapter
RUN pip install --no-deps ".[$EXTRAS]" && useradd --system --no-create-home durable

# a server node is healthy when it answers an Engine.IO handshake on $DURABLE_ADAPTER_PORT;
# docker-compose.yml adds `durable-adapter check` (the store) and turns it off for
# the one-shot and worker services
COPY deploy/healthcheck.py /usr/local/bin/durable-adapter-healthcheck
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/durable-adapter-healthcheck"]

USER durable
WORKDIR /tmp
CMD ["durable-adapter", "--help"]
