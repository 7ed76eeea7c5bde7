#!/usr/bin/env bash
# A loopback central, end to end: sshd on 127.0.0.1 with evosync-gate as the forced command of a party's key, and a
# worker that does what the kromosynth sync manager does (mkdir -p, then sqlite3_rsync per database), with the
# stock client. Prints what happened and leaves the folder for a look (target/demo-*).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi

scripts/setup-test-env.sh
cargo build --release --locked --bins
gate=$PWD/target/release/evosync-gate
admin=$PWD/target/release/evosync

# Under target/: every parent is root-owned and not writable by others, as sshd's StrictModes wants.
demo=$(mktemp -d "$PWD/target/demo-XXXXXX")
chmod 0755 "$demo"
mkdir -p "$demo"/{policies,replicas/demo,state,keys,worker}
cat >"$demo/evosync.yaml" <<YAML
replica_root: $demo/replicas
policies_dir: $demo/policies
state_dir: $demo/state
sqlite3_rsync: /usr/local/bin/sqlite3_rsync
audit_log: $demo/state/audit.log
YAML
cat >"$demo/policies/demo.yaml" <<'YAML'
party: demo
push: true
create_runs: true
path_prefixes: [/data/evorun-sync]
limits:
  max_db_bytes: 1GiB
  max_party_bytes: 10GiB
YAML
"$admin" --config "$demo/evosync.yaml" policy check
chown -R evosync:evosync "$demo/replicas/demo" "$demo/state"

# sshd on a free loopback port, with the shared-account snippet.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ssh-keygen -q -t ed25519 -N '' -f "$demo/host_key"
ssh-keygen -q -t ed25519 -N '' -C demo-worker -f "$demo/worker_key"
echo "command=\"$gate --config $demo/evosync.yaml --party demo\",restrict $(cat "$demo/worker_key.pub")" >"$demo/keys/evosync"
chmod 0755 "$demo/keys"; chmod 0644 "$demo/keys/evosync"
{
  printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nPidFile none\nUsePAM no\nAllowUsers evosync\n' "$port" "$demo/host_key"
  sed -e "s#/etc/evosync/authorized_keys/%u#$demo/keys/%u#" sshd/evosync-shared-account.conf
} >"$demo/sshd_config"
/usr/sbin/sshd -t -f "$demo/sshd_config"
/usr/sbin/sshd -D -f "$demo/sshd_config" -E "$demo/sshd.log" &
sshd_pid=$!
trap 'kill $sshd_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

cat >"$demo/ssh" <<SH
#!/bin/sh
exec ssh -p $port -i $demo/worker_key -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "\$@"
SH
chmod 0755 "$demo/ssh"

# A worker's run: two WAL databases shaped like kromosynth's.
run=01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_demo
mkdir -p "$demo/worker/$run"
make_db() { # path table rows blob_bytes
  sqlite3 "$1" "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS $2 (id TEXT PRIMARY KEY, data BLOB);
    CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT);
    INSERT OR REPLACE INTO metadata VALUES ('creationDate', datetime('now'));
    WITH RECURSIVE n(i) AS (SELECT (SELECT count(*) FROM $2) UNION ALL SELECT i + 1 FROM n LIMIT $3)
    INSERT OR REPLACE INTO $2 SELECT printf('01KFYA%020d', i), randomblob($4) FROM n;" >/dev/null
}
make_db "$demo/worker/$run/genomes.sqlite" genomes 20000 1500
make_db "$demo/worker/$run/features.sqlite" features 5000 8000

worker() {
  echo "worker\$ $*"
  "$@"
}
echo
echo "== the worker sync manager's sequence against evosync@127.0.0.1:$port"
worker "$demo/ssh" evosync@127.0.0.1 "mkdir -p \"/data/evorun-sync/$run\""
for db in genomes features; do
  worker sqlite3_rsync "$demo/worker/$run/$db.sqlite" "evosync@127.0.0.1:/data/evorun-sync/$run/$db.sqlite" --ssh "$demo/ssh" -v
done
echo
echo "== 1 % more rows, then an incremental push"
make_db "$demo/worker/$run/genomes.sqlite" genomes 200 1500
worker sqlite3_rsync "$demo/worker/$run/genomes.sqlite" "evosync@127.0.0.1:/data/evorun-sync/$run/genomes.sqlite" --ssh "$demo/ssh" -v
echo
echo "== what the gate refuses"
worker sqlite3_rsync "$demo/worker/$run/genomes.sqlite" "evosync@127.0.0.1:/data/evorun-sync/../../etc/genomes.sqlite" --ssh "$demo/ssh" || true
worker "$demo/ssh" evosync@127.0.0.1 'cat /etc/passwd' || true
echo
echo "== central side"
for db in genomes features; do
  origin=$(sqlite3 "$demo/worker/$run/$db.sqlite" "SELECT count(*), sum(length(data)) FROM $db")
  replica=$(sqlite3 "file:$demo/replicas/demo/$run/$db.sqlite?mode=ro" "SELECT count(*), sum(length(data)) FROM $db")
  check=$(sqlite3 "file:$demo/replicas/demo/$run/$db.sqlite?mode=ro" "PRAGMA integrity_check")
  echo "$db: origin rows|bytes $origin, replica $replica, integrity $check"
  [ "$origin" = "$replica" ] && [ "$check" = ok ]
done
echo
echo "== audit log ($demo/state/audit.log)"
cat "$demo/state/audit.log"
echo
echo "demo ok: $demo"
