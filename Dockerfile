# Two stages: resolve the locked environment with uv, then a slim runtime that runs the Dagster code server.
FROM python:3.11-slim-bookworm AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY medlake_assets ./medlake_assets
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libarchive13 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 medlake
COPY --from=build /opt/venv /opt/venv
COPY metadata /app/metadata
COPY workspace.yaml dagster.yaml /app/
ENV PATH=/opt/venv/bin:$PATH MEDLAKE_SOURCES_DIR=/app/metadata/sources PYTHONUNBUFFERED=1
WORKDIR /app
USER medlake
EXPOSE 4000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "medlake_assets.definitions"]
