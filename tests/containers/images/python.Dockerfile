# The stand-in for python:3.11-slim-bookworm: Debian's Python 3.11 with venv,
# `python` on PATH. Built by tests/containers from the local Debian image,
# since Docker Hub is out of reach where the tests run.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python-is-python3 \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
