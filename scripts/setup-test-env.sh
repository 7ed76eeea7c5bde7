#!/usr/bin/env bash
# Prepares a Debian 12 machine for evosync's tests and demo; safe to run again.
#  - Debian packages: openssh-server (sshd for the loopback central), sqlite3 (the demo's data), curl, wrk,
#    systemd (systemd-analyze), build tools, python3-websockets (a generic WebSocket client for the tunnel test);
#  - the stock sqlite3_rsync >= 3.53.4, built from Debian's source package (scripts/build-sqlite3-rsync.sh);
#  - Debian's chromium and chromium-driver, the headless browser and its WebDriver the dashboard's tests drive;
#  - the gate accounts: `evosync` (shared-account mode, and the service's) and `evosync-acme`, `evosync-beta`
#    (per-party mode), each party account with a group of its own.
# Gate accounts get the plain /bin/sh and a root-owned, empty home: sshd runs a forced command through the login
# shell, and would run ~/.ssh/rc from a home the party could write.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-test-env: run as root (it installs packages and creates accounts)" >&2
  exit 1
fi

missing=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v wrk >/dev/null || missing+=(wrk)
# The dashboard's browser tests (tests/dashboard_browser.rs): Debian's own builds, never a downloaded browser.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
for tool in gcc make tclsh xz; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  # tool names to package names
  packages=()
  for item in "${missing[@]}"; do
    case $item in
      tclsh) packages+=(tcl) ;;
      xz) packages+=(xz-utils) ;;
      *) packages+=("$item") ;;
    esac
  done
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

scripts/build-sqlite3-rsync.sh /usr/local/bin/sqlite3_rsync

# sshd's privilege separation folder (systemd makes it when sshd runs as a service).
install -d -m 0755 /run/sshd

home=/var/lib/evosync-home
install -d -o root -g root -m 0755 "$home"
getent group evosync >/dev/null || groupadd --system evosync
# `evosync` is the service's account and the shared-account gate's (group evosync: the store, the locks). Each party
# account `evosync-NAME` has a group of its own and is in no other, so it can read no other party's tree, nor the
# store; `evosync` is a member of every party group, so the service can read and write each party's tree.
for account in evosync evosync-acme evosync-beta; do
  group=$account
  getent group "$group" >/dev/null || groupadd --system "$group"
  if ! getent passwd "$account" >/dev/null; then
    useradd --system --gid "$group" --home-dir "$home" --no-create-home --shell /bin/sh "$account"
  fi
  # '*' rather than useradd's locked '!': sshd refuses locked accounts even for keys, and no password matches '*'.
  usermod --password '*' --shell /bin/sh --home "$home" --gid "$group" --groups '' "$account"
done
usermod --append --groups evosync-acme,evosync-beta evosync
# The catalog's readers: `evosync-reader` is in `evosync-readers` (catalog_group) and nothing else, like the account
# kromosynth-evoruns runs as on a central host.
getent group evosync-readers >/dev/null || groupadd --system evosync-readers
if ! getent passwd evosync-reader >/dev/null; then
  useradd --system --gid evosync-readers --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin evosync-reader
fi
usermod --gid evosync-readers --groups '' evosync-reader

# The reader test's Node packages (better-sqlite3 from npm, as kromosynth-evoruns uses it). Node also runs the
# workers' upload client of tests/worker_http.rs (tests/worker/upload.js: Node's own http and https, no packages).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm g++ >/dev/null
fi
if [ ! -f tests/reader/node_modules/better-sqlite3/build/Release/better_sqlite3.node ]; then
  (cd tests/reader && npm ci --no-audit --no-fund --loglevel=error)
fi
# The tunnel test's generic WebSocket client (tests/websocket_proxy.py): Debian's python3 with its websockets package.
if ! /usr/bin/python3 -c 'import websockets' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-websockets >/dev/null
fi
# sshd's AuthorizedKeysCommandUser: may read the state store (group evosync), may not log in.
if ! getent passwd evosyncauth >/dev/null; then
  useradd --system --gid evosync --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin evosyncauth
fi
echo "test environment ready: sshd $(/usr/sbin/sshd -V 2>&1 | head -n1 | cut -d, -f1), sqlite3_rsync of $(/usr/local/bin/sqlite3_rsync --version | cut -d' ' -f1), node $(node --version), $(/usr/bin/chromedriver --version | cut -d' ' -f1-2), accounts evosync evosync-acme evosync-beta evosyncauth evosync-reader"
