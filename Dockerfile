# medlake's image: the Dagster code server, and the same image for every run pod and `medlake` command.
# Build with a unique tag, the git sha (docs/deploy.md):
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) -t <registry>/medlake:$(git rev-parse --short=12 HEAD) .
# Stage 1 installs exactly uv.lock (`--frozen`: a lock out of date with pyproject.toml fails the build),
# the lock `make install` and CI test against; stage 2 is a slim runtime without build tools.
FROM python:3.11-slim-bookworm AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY medlake_assets ./medlake_assets
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim-bookworm
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.revision="${GIT_SHA}" org.opencontainers.image.licenses="Apache-2.0"
# libarchive decrypts and unpacks the facility archives (a system library, not a wheel). The chart mounts
# the instance's dagster.yaml into /opt/dagster/dagster_home, where Dagster also writes: owned by the user.
RUN apt-get update && apt-get install -y --no-install-recommends libarchive13 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group medlake \
    && mkdir -p /var/lib/medlake /opt/dagster/dagster_home \
    && chown 10001:10001 /var/lib/medlake /opt/dagster/dagster_home
COPY --from=build /opt/venv /opt/venv
# Source and report metadata: the package is installed into /opt/venv, so point it at them explicitly.
COPY metadata /app/metadata
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MEDLAKE_SOURCES_DIR=/app/metadata/sources \
    MEDLAKE_REPORTS_DIR=/app/metadata/reports \
    MEDLAKE_HOME=/var/lib/medlake
# Polars' and Arrow's allocators (both jemalloc) give freed pages back within 250 ms
# (medlake_assets/lake/memory.py: ALLOCATOR_ENV).
ENV _RJEM_MALLOC_CONF=background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0 \
    ARROW_DEFAULT_MEMORY_POOL=jemalloc \
    JE_ARROW_MALLOC_CONF=background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0
WORKDIR /app
# Numeric, so Kubernetes can check runAsNonRoot; the chart values run pods as the same uid.
USER 10001
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "medlake_assets.definitions"]
