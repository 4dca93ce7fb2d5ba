#!/usr/bin/env bash
# debian-rootfs.sh OUT.tar: a Debian bookworm root filesystem for `docker import`,
# the stand-in for debian:bookworm-slim that every other stand-in base builds on.
#
# debootstrap's minbase variant (what the official image is made of), slimmed
# as the official -slim images are (no documentation, manual pages or
# translations, no apt lists or caches), plus this machine's locally added CA
# certificates: registries are reached through the machine's TLS-inspecting
# egress here, and builds inside containers must trust it as the host does.
set -euo pipefail

out=$1
suite=bookworm
mirror=http://deb.debian.org/debian
root=$(mktemp -d "${out}.rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"${root}.log" 2>&1 \
  || { tail -n 30 "${root}.log" >&2; rm -f "${root}.log"; exit 1; }
rm -f "${root}.log" "$root/etc/resolv.conf" "$root/etc/hostname"

cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES

# The -slim images' dpkg filter, so that packages installed later stay slim too.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'FILTER'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
FILTER
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,groff,info,lintian,linda,locale}/* \
  "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
  "$root"/var/log/*.log "$root"/var/log/apt/*

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi

tar --numeric-owner --xattrs -C "$root" -cf "$out" .
