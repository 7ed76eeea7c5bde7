#!/usr/bin/env bash
# A loopback central, end to end, as an administrator and a worker would use it:
#   evosync init, party add, ssh-key add (managed authorized_keys), api-key issue, evosync serve (admin + sync API),
#   sshd on 127.0.0.1 with the shared-account snippet and evosync-gate as each key's forced command,
#   then the worker sync manager's sequence with the stock client: ssh mkdir -p, sqlite3_rsync per database,
#   register, list, upload (its hand-built multipart body), list again; and a few refusals;
#   then a reader as kromosynth-evoruns opens them (better-sqlite3, read-only, as an account of the catalog's group
#   only) through the catalog of verified runs.
# Leaves its folder for a look (target/demo-*).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi

scripts/setup-test-env.sh
cargo build --release --locked --bins
gate=$PWD/target/release/evosync-gate
evosync=$PWD/target/release/evosync

# Under target/: every parent is root-owned and not writable by others, as sshd's StrictModes wants.
demo=$(mktemp -d "$PWD/target/demo-XXXXXX")
chmod 0755 "$demo"
cfg=$demo/evosync.yaml
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ssh_port=$(free_port)
http_port=$(free_port)
say() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "administrator: init, a party, its SSH key and API key"
mkdir -p "$demo/keys"
install -o evosync -g evosync -m 0600 /dev/null "$demo/keys/evosync"   # sshd reads it as the evosync account
run "$evosync" --config "$cfg" init --replica-root "$demo/replicas" --policies-dir "$demo/policies" \
  --state-dir "$demo/state" --gate "$gate" --authorized-keys "$demo/keys/evosync" --listen "127.0.0.1:$http_port" \
  --catalog-root "$demo/catalog" \
  | sed -E 's/^(evsadm_[0-9a-f]{16}_)[0-9a-f]+$/\1…/'
run "$evosync" --config "$cfg" party add demo
ssh-keygen -q -t ed25519 -N '' -C demo-worker -f "$demo/worker_key"
run "$evosync" --config "$cfg" ssh-key add demo --public-key "$demo/worker_key.pub" --comment demo-worker
api_key=$("$evosync" --config "$cfg" --json api-key issue demo --name demo-worker |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
admin_token=$("$evosync" --config "$cfg" --json admin-token | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_token"])')
run "$evosync" --config "$cfg" policy check

say "central: sshd on 127.0.0.1:$ssh_port (shared-account snippet), evosync serve on 127.0.0.1:$http_port"
ssh-keygen -q -t ed25519 -N '' -f "$demo/host_key"
{
  printf 'Port %s\nListenAddress 127.0.0.1\nHostKey %s\nPidFile none\nUsePAM no\nAllowUsers evosync\n' "$ssh_port" "$demo/host_key"
  sed -e "s#/etc/evosync/authorized_keys/%u#$demo/keys/%u#" sshd/evosync-shared-account.conf
} >"$demo/sshd_config"
/usr/sbin/sshd -t -f "$demo/sshd_config"
/usr/sbin/sshd -D -f "$demo/sshd_config" -E "$demo/sshd.log" &
sshd_pid=$!
# The service runs as the evosync account, as systemd/evosync.service runs it.
setpriv --reuid=evosync --regid=evosync --init-groups "$evosync" --config "$cfg" serve 2>"$demo/serve.log" &
serve_pid=$!
trap 'kill $sshd_pid $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$ssh_port") 2>/dev/null && curl -fs "http://127.0.0.1:$http_port/healthz" >/dev/null && break
  sleep 0.1
done

cat >"$demo/ssh" <<SH
#!/bin/sh
exec ssh -p $ssh_port -i $demo/worker_key -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "\$@"
SH
chmod 0755 "$demo/ssh"

# A worker's run: two WAL databases shaped like kromosynth's, and analysis files.
run_name=01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_demo
local_run=$demo/worker/$run_name
mkdir -p "$local_run/analysisResults/trees"
make_db() { # path table rows blob_bytes
  sqlite3 "$1" "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS $2 (id TEXT PRIMARY KEY, data BLOB);
    CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT);
    INSERT OR REPLACE INTO metadata VALUES ('creationDate', datetime('now'));
    WITH RECURSIVE n(i) AS (SELECT (SELECT count(*) FROM $2) UNION ALL SELECT i + 1 FROM n LIMIT $3)
    INSERT OR REPLACE INTO $2 SELECT printf('01KFYA%020d', i), randomblob($4) FROM n;" >/dev/null
}
make_db "$local_run/genomes.sqlite" genomes 20000 1500
make_db "$local_run/features.sqlite" features 5000 8000
for step in 1 2 3; do head -c 20480 /dev/urandom >"$local_run/analysisResults/coverage_${run_name}_step-$step.json.gz"; done
head -c 4096 /dev/urandom >"$local_run/analysisResults/trees/tree_${run_name}_step-1.json.gz"

say "worker: the sync manager's sequence (stock sqlite3_rsync, plain ssh, its REST calls)"
run "$demo/ssh" evosync@127.0.0.1 "mkdir -p \"/data/evorun-sync/$run_name\""
for db in genomes features; do
  run sqlite3_rsync "$local_run/$db.sqlite" "evosync@127.0.0.1:/data/evorun-sync/$run_name/$db.sqlite" --ssh "$demo/ssh" -v
done
api=http://127.0.0.1:$http_port/api/sync
run curl -fsS -X POST "$api/register/$run_name" -H "X-Sync-API-Key: $api_key" -H 'Content-Type: application/json' \
  -d '{"templateName":"CMA-MAE","ecosystemVariant":"demo","startedAt":"2026-11-25T06:00:00.000Z"}'
echo
upload() { # subdir file [name]: the worker's hand-built multipart body, subdir part first
  local boundary="----SyncBoundary$(date +%s%3N)" body=$demo/body status=0
  { printf -- '--%s\r\nContent-Disposition: form-data; name="subdir"\r\n\r\n%s\r\n' "$boundary" "$1"
    printf -- '--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\nContent-Type: application/gzip\r\n\r\n' "$boundary" "${3:-$(basename "$2")}"
    cat "$2"; printf -- '\r\n--%s--\r\n' "$boundary"; } >"$body"
  curl -sS --fail-with-body -X POST "$api/analysis/$run_name" -H "X-Sync-API-Key: $api_key" \
    -H "Content-Type: multipart/form-data; boundary=$boundary" --data-binary @"$body" || status=$?
  echo
  return $status
}
for subdir in analysisResults analysisResults/trees; do
  printf '$ curl %s/analysis/%s/list?subdir=%s\n' "$api" "$run_name" "$subdir"
  curl -sS "$api/analysis/$run_name/list?subdir=${subdir//\//%2F}" -H "X-Sync-API-Key: $api_key"; echo
  for file in "$local_run/$subdir"/*.json.gz; do
    printf 'upload %s/%s: ' "$subdir" "$(basename "$file")"
    upload "$subdir" "$file"
  done
done
run curl -fsS "$api/analysis/$run_name/list" -H "X-Sync-API-Key: $api_key"
echo

say "worker: 1 % more rows, then an incremental push"
make_db "$local_run/genomes.sqlite" genomes 200 1500
run sqlite3_rsync "$local_run/genomes.sqlite" "evosync@127.0.0.1:/data/evorun-sync/$run_name/genomes.sqlite" --ssh "$demo/ssh" -v

say "what is refused"
run sqlite3_rsync "$local_run/genomes.sqlite" "evosync@127.0.0.1:/data/evorun-sync/../../etc/genomes.sqlite" --ssh "$demo/ssh" || true
run "$demo/ssh" evosync@127.0.0.1 'cat /etc/passwd' || true
printf 'upload analysisResults/../escape.json.gz: '
if upload analysisResults "$local_run/analysisResults/coverage_${run_name}_step-1.json.gz" ../escape.json.gz 2>/dev/null; then
  echo "stored?! (this must not happen)"; exit 1
fi
[ ! -e "$demo/replicas/demo/$run_name/escape.json.gz" ]
run curl -sS "$api/analysis/$run_name/list" -H "X-Sync-API-Key: wrong"; echo

say "central: the replicas, the run's status, the admin view"
for db in genomes features; do
  origin=$(sqlite3 "$local_run/$db.sqlite" "SELECT count(*), sum(length(data)) FROM $db")
  replica=$(sqlite3 "file:$demo/replicas/demo/$run_name/$db.sqlite?mode=ro" "SELECT count(*), sum(length(data)) FROM $db")
  check=$(sqlite3 "file:$demo/replicas/demo/$run_name/$db.sqlite?mode=ro" "PRAGMA integrity_check")
  echo "$db: origin rows|bytes $origin, replica $replica, integrity $check"
  [ "$origin" = "$replica" ] && [ "$check" = ok ]
done
# Analysis files live in the run's home in the catalog: published, or held back until its databases passed.
home="$demo/catalog/$run_name"
[ -d "$home" ] || home="$demo/catalog-verified/$run_name"
for file in "$local_run"/analysisResults/*.json.gz "$local_run"/analysisResults/trees/*.json.gz; do
  cmp -s "$file" "$home/${file#"$local_run"/}"
done
echo "analysis files: all identical on the central, in $home"
run curl -fsS "$api/status/$run_name" -H "X-Sync-API-Key: $api_key"; echo
run curl -fsS "http://127.0.0.1:$http_port/admin/runs" -H "Authorization: Bearer $admin_token"; echo
run "$evosync" --config "$cfg" audit verify

say "a reader: kromosynth-evoruns' way (better-sqlite3, readonly, journal_mode WAL) as evosync-reader, rooted at the catalog"
# The service checks and copies each push after the worker's client has gone: wait until no job is left.
for _ in $(seq 300); do
  [ "$(sqlite3 "file:$demo/state/state.db?mode=ro" 'SELECT count(*) FROM catalog_jobs')" = 0 ] &&
    [ -d "$demo/catalog/$run_name" ] && break
  sleep 0.1
done
grep 'event=copy ' "$demo/serve.log"
run ls -l "$demo/catalog/$run_name"
printf '%s\n' \
  "{\"op\":\"lookup\",\"run\":\"$run_name\"}" \
  "{\"op\":\"count\",\"run\":\"$run_name\",\"db\":\"genomes.sqlite\",\"table\":\"genomes\"}" \
  "{\"op\":\"count\",\"run\":\"$run_name\",\"db\":\"features.sqlite\",\"table\":\"features\"}" \
  "{\"op\":\"files\",\"run\":\"$run_name\",\"dir\":\"analysisResults\"}" \
  "{\"op\":\"write\",\"run\":\"$run_name\",\"db\":\"genomes.sqlite\"}" |
  runuser -u evosync-reader -- node tests/reader/reader.js "$demo/catalog" | tee "$demo/reader.out"
grep -q '"count":20200' "$demo/reader.out"   # every genome, the incremental push's too
run "$evosync" --config "$cfg" catalog check
echo
echo "demo ok: $demo (audit trail: $evosync --config $cfg audit list)"
