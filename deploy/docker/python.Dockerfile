# ravi-python: the Python node, the ravi server and Restate workers. The
# container's command is the `ravi` command line's arguments: `node ...` (the
# default), `serve ...` or `restate worker ...`.
#
#   docker build -f deploy/docker/python.Dockerfile -t ravi-python .
#   docker run ravi-python node --listen 0.0.0.0:50051 --setup ravi._demo.nodes:writer
#
# Every Python package comes from deploy/docker/requirements.txt, locked with
# hashes at the versions of tools/requirements.txt (`make lock-images`). The
# image's virtualenv holds ravi with its server, telemetry and restate extras
# and what they need at run time: no pip, no build backend. The base image is a
# build argument (docker-compose.yml passes PYTHON_IMAGE); pin it by digest
# (python:3.11-slim-bookworm@sha256:...) in production. No `# syntax` line: the
# engine's own Dockerfile frontend builds this file, offline too.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Every locked package as a wheel, each checked against its hash, and hatchling
# (which builds ravi's wheel) in a virtualenv for the build alone.
COPY deploy/docker/requirements.txt deploy/docker/requirements.txt
RUN python -m venv /opt/build \
 && /opt/build/bin/pip wheel --quiet --require-hashes --no-deps --wheel-dir /wheels \
      -r deploy/docker/requirements.txt \
 && /opt/build/bin/pip install --quiet --no-index --find-links /wheels hatchling
# python/src/ravi/{mesh,examples,...} are links into gen/python: both trees,
# side by side as in the repository, and hatchling puts real files in the wheel.
COPY gen/python gen/python
COPY python python
# The image's virtualenv, without pip: ravi's wheel and, resolved from the
# locked wheels alone, exactly the packages it needs.
RUN /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /wheels ./python \
 && python -m venv --without-pip /opt/ravi \
 && /opt/build/bin/pip --python /opt/ravi/bin/python install --quiet --no-index \
      --find-links /wheels "ravi[server,telemetry,restate]" \
 && /opt/build/bin/pip --python /opt/ravi/bin/python check \
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
# Where `ravi serve` keeps its threads (RAVI_DATA_DIR): a volume mounted here
# starts out owned by the user the server runs as.
RUN mkdir -p /var/lib/ravi && chown 10001:10001 /var/lib/ravi
ENV RAVI_DATA_DIR=/var/lib/ravi
WORKDIR /app
USER 10001:10001
EXPOSE 50051 8000 9080
ENTRYPOINT ["ravi"]
CMD ["node", "--listen", "0.0.0.0:50051"]
