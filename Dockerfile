# syntax=docker/dockerfile:1
# The grsai-pipeline image (SPEC 10): the package with the pinned versions of constraints.txt and
# the run launchers of deploy/ (the `deploy` extra). By default it serves the code location over
# gRPC (`dagster code-server start`); the same image runs dagster-webserver, dagster-daemon,
# `grsai-pipeline webhook serve`, `grsai-pipeline api serve` and every launched run, with another
# command (deploy/docker-compose.yaml, deploy/helm/values.yaml).
#
#   docker build -t grsai-pipeline:0.1.0 .

# The Python minor version the project is developed and tested on (pyproject: py311).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the wheel is built from: the image does not change when tests or docs do.
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY grsai_pipeline ./grsai_pipeline
RUN /opt/venv/bin/pip install -c constraints.txt ".[deploy]"

FROM ${PYTHON_IMAGE}
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 grsai \
    && useradd --system --uid 10001 --gid grsai --home-dir /opt/dagster --no-create-home \
        --shell /usr/sbin/nologin grsai \
    && mkdir -p /opt/dagster/dagster_home /opt/dagster/app /opt/dagster/videos \
    && chown -R grsai:grsai /opt/dagster
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    GRSAI_ARCHIVE_URL=/opt/dagster/videos
WORKDIR /opt/dagster/app
USER 10001:10001

# 4000: the code location's gRPC server (deploy/workspace.yaml points the webserver and the
# daemon at it); other commands of this image listen where their own service says.
EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "grsai_pipeline.definitions", "-a", "defs", "--location-name", "grsai_pipeline"]
