# The stand-in for docker.io/restatedev/restate: restate-server from the npm
# package @restatedev/restate-server (the build context is its bin folder), on
# Debian slim with curl and jq, as root in /, like the released image.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl jq \
 && rm -rf /var/lib/apt/lists/*
COPY restate-server /usr/local/bin/restate-server
WORKDIR /
ENTRYPOINT ["/usr/local/bin/restate-server"]
