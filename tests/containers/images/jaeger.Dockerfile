# The stand-in for jaegertracing/jaeger: the Jaeger v2 binary `make setup`
# builds from the Go module proxy (the build context is .tools/bin), laid out as
# in the released image (user 10001, /cmd/jaeger/jaeger-linux), with busybox's
# wget as the released image's Alpine base has it.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /bin/busybox /usr/local/bin/wget
ENV JAEGER_LISTEN_HOST=0.0.0.0
COPY jaeger /cmd/jaeger/jaeger-linux
VOLUME ["/tmp"]
ENTRYPOINT ["/cmd/jaeger/jaeger-linux"]
USER 10001
