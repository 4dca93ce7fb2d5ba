# syntax=docker/dockerfile:1
# ravi-python: the Python node, the ravi server and Restate workers. The
# container's command is the `ravi` command line's arguments: `node ...` (the
# default), `serve ...` or `restate worker ...`.
#
#   docker build -f deploy/docker/python.Dockerfile -t ravi-python .
#   docker run ravi-python node --listen 0.0.0.0:50051 --setup ravi._demo.nodes:writer
#
# Every Python package (ravi with its server, telemetry, restate and postgres extras)
# comes from deploy/docker/requirements.txt, locked with hashes at the versions
# of tools/requirements.txt (`make lock-images`). Pin the base image by digest
# (python:3.11-slim-bookworm@sha256:...) in production.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY deploy/docker/requirements.txt deploy/docker/requirements.txt
RUN python -m venv /opt/ravi \
 && /opt/ravi/bin/pip install --require-hashes --no-deps -r deploy/docker/requirements.txt
# python/src/ravi/{mesh,examples,...} are links into gen/python: both trees,
# side by side as in the repository, and hatchling puts real files in the wheel.
COPY gen/python gen/python
COPY python python
RUN /opt/ravi/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ./python \
 && /opt/ravi/bin/pip install --no-deps /wheels/ravi-*.whl \
 && /opt/ravi/bin/pip check \
 && /opt/ravi/bin/python -m compileall -q /opt/ravi/lib

FROM ${PYTHON_IMAGE}
# Bytecode was compiled in the build stage: the root filesystem may be read-only.
ENV PATH=/opt/ravi/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR
COPY --from=build /opt/ravi /opt/ravi
# The Markdown files the demo's searcher searches (--setup-arg docs=/app/docs).
COPY docs /app/docs
WORKDIR /app
USER 10001:10001
EXPOSE 50051 8000
ENTRYPOINT ["ravi"]
CMD ["node", "--listen", "0.0.0.0:50051"]
