#!/usr/bin/env bash
# Builds the stock sqlite3_rsync (SQLite >= 3.53.4) from Debian's source package of sqlite3 and installs it.
#
# Debian 12 ships SQLite 3.40, which has no sqlite3_rsync. The sid suite's source package carries the full SQLite tree
# (tool/sqlite3_rsync.c included). apt reads a private source list here, so the machine's own sources stay untouched;
# the mirror is the one the machine already uses.
#
# Usage: scripts/build-sqlite3-rsync.sh [DEST]   (DEST defaults to /usr/local/bin/sqlite3_rsync)
# Does nothing when DEST already holds sqlite3_rsync of SQLite 3.53.4 or newer.
#
# Why 3.53.4: before it, the replica side accepted a page size of up to 2^31 in an ORIGIN_BEGIN it answered with a
# protocol counter-offer, and the next ORIGIN_PAGE read that many bytes into a 64 KiB stack buffer. 3.53.4 caps the
# page size at 64 KiB and checks every ORIGIN_BEGIN. The gate refuses to run anything older (src/gate/rsync_version.rs
# holds the same date).
set -euo pipefail

dest=${1:-/usr/local/bin/sqlite3_rsync}
# `sqlite3_rsync --version` prints SQLite's source id ("DATE TIME HASH"), not a version number; 3.53.4's source date is
# 2026-07-24, so an older source date means an older release.
min_source_date=${MIN_SOURCE_DATE:-2026-07-24}

version_ok() {
  local have
  [ -x "$1" ] || return 1
  have=$("$1" --version 2>/dev/null | awk '{print $1}') || return 1
  [[ $have =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || return 1
  [[ ! $have < $min_source_date ]]
}

if version_ok "$dest"; then
  echo "sqlite3_rsync of $("$dest" --version | awk '{print $1}') already at $dest"
  exit 0
fi

# Take the mirror from the machine's own configuration rather than naming one here.
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' \
    /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "build-sqlite3-rsync: no Debian mirror found in /etc/apt/sources.list{,.d/debian.sources}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
need=()
for tool in gcc make tclsh xz; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq gcc make tcl xz-utils >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # apt downloads as the _apt user
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$work/sid.list"
apt_private=(
  -o "Dir::Etc::SourceList=$work/sid.list"
  -o "Dir::Etc::SourceParts=$work/parts"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache::archives=$work/archives"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Get::List-Cleanup=false"
)
apt-get "${apt_private[@]}" update -qq
(cd "$work/src" && apt-get "${apt_private[@]}" source --download-only -qq sqlite3)

orig=$(ls "$work"/src/sqlite3_*.orig.tar.* | grep -v -- '-www' | head -n1)
echo "building sqlite3_rsync from $(basename "$orig")"
tar -C "$work/src" -xf "$orig"
tree=$(dirname "$(ls -d "$work"/src/*/tool/sqlite3_rsync.c | head -n1)")/..
cd "$tree"
./configure --disable-tcl >/dev/null
make -j"$(nproc)" sqlite3_rsync >/dev/null
install -D -m 0755 sqlite3_rsync "$dest"
version_ok "$dest" || { echo "build-sqlite3-rsync: built binary predates $min_source_date (3.53.4)" >&2; exit 1; }
echo "installed sqlite3_rsync of $("$dest" --version | awk '{print $1}') ($(basename "$orig")) at $dest"
