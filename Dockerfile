# syntax=docker/dockerfile:1
# Potok State Service: one image for `serve`, `worker` and `migrate`.

FROM python:3.11-slim AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
# Dependencies first (cached until the lock file changes), then the project.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
# The build writes client/sync.py, generated from client/aio.py.
COPY hatch_build.py ./
COPY scripts/generate_sync_client.py ./scripts/
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN groupadd --system --gid 10001 potok \
    && useradd --system --uid 10001 --gid potok --home-dir /app --no-create-home potok \
    && mkdir -p /app/data \
    && chown potok:potok /app/data
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=3002 \
    LOG_FORMAT=json
USER potok
EXPOSE 3002
# The slim image has no curl: the probe is a one-line Python HTTP GET.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3002') + '/health/liveness', timeout=2)"]
# uvicorn drains in-flight requests for up to 30 s after SIGTERM; give it that.
STOPSIGNAL SIGTERM
CMD ["potok-state", "serve"]
