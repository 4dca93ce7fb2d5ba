# The stand-ins for gcr.io/distroless/static-debian12:nonroot (target static)
# and gcr.io/distroless/cc-debian12:nonroot (target cc): no shell, no package
# manager, the user nonroot (65532); cc adds glibc and the C++ runtime. Files
# come from the local Debian image's packages, as distroless takes them from
# Debian's (merged /usr: /lib is a link to /usr/lib).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE} AS files
RUN set -eu; \
    mkdir -p /static/etc/ssl/certs /static/tmp /static/home/nonroot /static/usr/share /cc; \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >/static/etc/passwd; \
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >/static/etc/group; \
    chmod 1777 /static/tmp; chown 65532:65532 /static/home/nonroot; \
    cp /etc/ssl/certs/ca-certificates.crt /static/etc/ssl/certs/; \
    cp /etc/os-release /static/etc/os-release; \
    cp -a /lib /lib64 /cc/; \
    dpkg -L libc6 libgcc-s1 libstdc++6 | while read -r path; do \
      case $path in /lib/* | /lib64/*) path=/usr$path ;; esac; \
      if [ -f "$path" ] && [ "${path#/usr/share/}" = "$path" ]; then cp -a --parents "$path" /cc; fi; \
    done

FROM scratch AS static
COPY --from=files /static /
USER 65532:65532
WORKDIR /home/nonroot

FROM static AS cc
COPY --from=files /cc /
