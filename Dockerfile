# One image for the four ConsentTrace services. The command picks service and step:
#   python -m services.<consent|registry|lineage|deletion> migrate   pre-start, idempotent
#   python -m services.<consent|registry|lineage|deletion> serve     HTTP API, consumers, outbox relay
# Configuration comes from the environment (DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8000

# Graphviz `dot` draws the lineage pictures (GET /api/v1/lineage/graph.svg|png; 503 without it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 consenttrace \
    && useradd --system --uid 10001 --gid consenttrace --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin consenttrace

WORKDIR /build

# Dependencies first, in their own layer, so a code change does not reinstall them.
# requirements.lock (the whole pinned tree) is used as constraints when it exists.
COPY pyproject.toml requirements.lock* ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && set -- \
    && if [ -f requirements.lock ]; then set -- -c requirements.lock; fi \
    && pip install --no-cache-dir "$@" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, installed (not editable), then the sources are dropped. A C compiler
# is there only for this step: it builds the lineage answer writer (setup.py), and leaves.
COPY README.md* LICENSE* setup.py ./
COPY contracts ./contracts
COPY services ./services
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && set -- \
    && if [ -f requirements.lock ]; then set -- -c requirements.lock; fi \
    && pip install --no-cache-dir "$@" . \
    && (cd / && python -c "from services.lineage.domain.graph_index import ACCELERATED; assert ACCELERATED") \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* /build

WORKDIR /app
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('HTTP_PORT', '8000'), timeout=4)"]

CMD ["python", "-c", "print('ConsentTrace: one image, four services. Run one of:\\n  python -m services.consent migrate|serve\\n  python -m services.registry migrate|serve\\n  python -m services.lineage migrate|serve\\n  python -m services.deletion migrate|serve')"]
