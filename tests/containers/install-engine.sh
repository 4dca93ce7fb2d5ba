#!/usr/bin/env bash
# install-engine.sh DEST PACKAGE=VERSION...: the container engine of
# tests/containers, unpacked from Debian packages into DEST (a machine-level
# cache folder named after the versions), never installed into the system.
#
# The packages come from Debian's archive through apt with a private state
# (lists, cache and sources of its own, trixie and bookworm), so the system's
# apt configuration stays as it is; apt checks every file against the
# archive's signed indexes. The host tools dockerd runs with (iptables, and
# slirp4netns and debootstrap for the tests) are installed with the system's
# apt when missing. Needs root, as dockerd does: otherwise it says so and
# installs nothing, and tests/containers skips.
set -euo pipefail

dest=$1
shift

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/containers: not root, so no container engine is installed (dockerd needs root)" >&2
  exit 0
fi

missing=()
for tool in iptables:iptables slirp4netns:slirp4netns debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "${dest}.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts" "$work/debs" "$work/root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$work/sources.list" <<SOURCES
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
deb [signed-by=$keyring] http://deb.debian.org/debian-security trixie-security main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
SOURCES
apt=(
  -o "Dir::State=$work" -o "Dir::State::Lists=$work/lists" -o Dir::State::status=/dev/null
  -o "Dir::Cache=$work" -o "Dir::Cache::Archives=$work/archives"
  -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=-
  -o "Dir::Etc::Parts=$work/parts" -o "Dir::Etc::PreferencesParts=$work/parts"
  -o Acquire::Languages=none -o APT::Architecture=amd64 -o APT::Sandbox::User=root
)
apt-get "${apt[@]}" update -qq
(cd "$work/debs" && apt-get "${apt[@]}" download -qq "$@") \
  || { echo "install-engine.sh: a pinned version is gone from Debian's archive; see apt-cache madison" >&2; exit 1; }
for package in "$@"; do
  dpkg-deb -x "$(compgen -G "$work/debs/${package%%=*}_*.deb")" "$work/root"
done

rm -rf "$dest"
mv "$work/root" "$dest"
"$dest/usr/sbin/dockerd" --version
"$dest/usr/libexec/docker/cli-plugins/docker-compose" version
