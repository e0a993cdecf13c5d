# syntax=docker/dockerfile:1.7
#
# vluna-bff container image.
#
#   docker build -t vluna-bff .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp \
#     -v "$PWD/config/bff.yaml:/etc/vluna-bff/bff.yaml:ro" vluna-bff
#
# Two stages: `builder` installs the locked dependencies and the project (a wheel, not an
# editable install) into /opt/venv with uv; the final stage copies only that virtual environment
# onto a clean slim Python: no uv, no compiler, no package cache. It runs as UID/GID 10001, works
# with a read-only root file system (bytecode is compiled at build time; nothing is written
# outside /tmp) and reads its configuration from /etc/vluna-bff/bff.yaml plus VLUNA_BFF__*
# environment variables (secrets as VLUNA_BFF__SECTION__KEY_FILE=/path). See docs/operations.md.
#
# tests/deploy/test_dockerfile.py lints this file with hadolint and replays the builder's RUN
# steps and the final ENTRYPOINT/CMD/HEALTHCHECK outside Docker: keep the install in `uv sync`
# RUN steps and the runtime settings in ENV lines.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /uvx /usr/local/bin/

ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never

WORKDIR /src

# Third-party dependencies of vluna-bff first (exactly as locked), so code changes do not
# invalidate them. The workspace's two distributions (vluna-bff and the vlunaai SDK in sdk/)
# come next; the dev group (test tools) never enters the image.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=sdk/pyproject.toml,target=sdk/pyproject.toml \
    uv sync --frozen --no-dev --no-editable --package vluna-bff --no-install-workspace

# Then vluna-bff and vlunaai themselves, built as wheels and installed non-editable into /opt/venv.
COPY pyproject.toml uv.lock README.md ./
COPY sdk/ ./sdk/
COPY bff/ ./bff/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package vluna-bff

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="vluna-bff" \
      org.opencontainers.image.description="Token-issuing backend-for-frontend for VlunaAI" \
      org.opencontainers.image.licenses="MIT"

# A fixed, unprivileged identity (the Helm chart sets runAsUser/runAsGroup 10001 to match).
# The standard library is byte-compiled here because the root file system is read-only at run
# time; /etc/vluna-bff/bff.yaml exists (empty) so that configuration by environment alone works.
RUN groupadd --system --gid 10001 vluna \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vluna \
    && python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path('stdlib'), quiet=2, workers=0)" \
    && mkdir -p /etc/vluna-bff \
    && printf '# Mount the vluna-bff configuration here (see docs/operations.md).\n' \
       > /etc/vluna-bff/bff.yaml

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    VLUNA_BFF_CONFIG=/etc/vluna-bff/bff.yaml \
    VLUNA_BFF__SERVER__HOST=0.0.0.0 \
    VLUNA_BFF__SERVER__PORT=8080

WORKDIR /tmp
USER 10001:10001
EXPOSE 8080

# Plain standard library: the slim image has no curl. Follows VLUNA_BFF__SERVER__PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VLUNA_BFF__SERVER__PORT', '8080'), timeout=4)"]

ENTRYPOINT ["vluna-bff"]
CMD ["serve"]
