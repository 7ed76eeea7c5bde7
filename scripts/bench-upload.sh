#!/usr/bin/env bash
# Upload benchmark of `evosync serve` (figures, not assertions), with the shared load definition:
#   wrk, 64 connections, the worker's hand-built multipart body, unique ~20 KB files  (../shared/bench/upload.lua)
# against the same server's GET /healthz in the same run (the ceiling of its HTTP stack), plus the server's peak RSS
# and the RSS a 1 GiB upload adds, and the disk's own ceiling for durable small files (benches/disk_ceiling.rs).
# Every 200 means the file and its folder entry were fsynced.
# Usage: scripts/bench-upload.sh [SECONDS]     (needs root for scripts/setup-test-env.sh, or wrk and curl installed)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
seconds=${1:-15}
lua=${EVOSYNC_SHARED:-$repo/../shared}/bench/upload.lua
[ -f "$lua" ] || { echo "bench-upload: $lua not found (set EVOSYNC_SHARED to the shared/ folder)" >&2; exit 1; }
command -v wrk >/dev/null && command -v curl >/dev/null || scripts/setup-test-env.sh >/dev/null

cargo build --release --locked --bins >/dev/null 2>&1 || cargo build --release --locked --bins
cargo bench --locked --bench disk_ceiling --no-run >/dev/null 2>&1 || cargo bench --locked --bench disk_ceiling --no-run
target=${CARGO_TARGET_DIR:-$repo/target}
evosync=$target/release/evosync
work=$(mktemp -d "$target/bench-upload-XXXXXX")
# On ext4 without a journal, a new inode skips every inode of its group freed in the last 5 minutes (up to 5 more
# while their table block is dirty), so a run placed where the previous one was just deleted would measure that
# deletion. Under a top-directory flag ext4 places each folder by a hash of its name: names of their own send this
# run's files to a block group of their own, as a long-running host's are.
chattr +T "$work" 2>/dev/null || true
tag=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
replicas=$work/replicas-$tag
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cfg=$work/evosync.yaml
"$evosync" --config "$cfg" --json init --replica-root "$replicas" --policies-dir "$work/policies" \
  --state-dir "$work/state" --listen "127.0.0.1:$port" >/dev/null
"$evosync" --config "$cfg" party add bench >/dev/null
cat >"$work/policies/bench.yaml" <<YAML
party: bench
push: true
create_runs: true
require_sandbox: false
uploads:
  max_file_bytes: 2GiB
  requests_per_second: 1000000
YAML
key=$("$evosync" --config "$cfg" --json api-key issue bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
run=01KFYA32R09C5KJYNH1SM2W1DR_bench

start_server() {
  "$evosync" --config "$cfg" serve 2>/dev/null &
  server=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.05; done
  echo "bench-upload: server did not start" >&2; exit 1
}
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$server/status"; }

start_server
curl -fs -X POST "http://127.0.0.1:$port/api/sync/register/$run" -H "X-Sync-API-Key: $key" \
  -H 'Content-Type: application/json' -d '{"templateName":"bench"}' >/dev/null

echo "== GET /healthz, wrk -t2 -c64 -d${seconds}s (ceiling of the HTTP stack)"
healthz_rps=$(wrk -t2 -c64 -d"${seconds}s" "http://127.0.0.1:$port/healthz" | awk '/Requests\/sec/ {print $2}')
echo "healthz: $healthz_rps requests/s"

echo "== uploads, wrk -t2 -c64 -d${seconds}s -s upload.lua (20 KB files, multipart as the worker builds it)"
cpu_before=$(awk '{print $14 + $15}' "/proc/$server/stat"); user_before=$(awk '{print $14}' "/proc/$server/stat")
result=$(RUN=$run KEY=$key wrk -t2 -c64 -d"${seconds}s" --latency -s "$lua" "http://127.0.0.1:$port" | grep '^RESULT')
cpu_after=$(awk '{print $14 + $15}' "/proc/$server/stat"); user_after=$(awk '{print $14}' "/proc/$server/stat")
echo "$result"
awk -v a="$cpu_before" -v b="$cpu_after" -v ua="$user_before" -v ub="$user_after" -v s="$seconds" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "server CPU during the upload run: %.0f%% of one core (%.0f%% in user space, the rest in the kernel)\n", (b - a) / hz / s * 100, (ub - ua) / hz / s * 100 }'
rps=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$result")
awk -v a="$cpu_before" -v b="$cpu_after" -v s="$seconds" -v hz="$(getconf CLK_TCK)" -v r="$rps" \
  'BEGIN { printf "server CPU per upload: %.0f us\n", (b - a) / hz / (r * s) * 1e6 }'
stored=$(find "$replicas/bench/$run/analysisResults" -name 'coverage_*' | wc -l)
echo "files stored: $stored; server peak RSS: $(( $(kib VmHWM) / 1024 )) MiB"
awk -v u="$rps" -v h="$healthz_rps" 'BEGIN { printf "uploads/s over healthz/s: %.3f\n", u / h }'
kill $server; wait $server 2>/dev/null || true

echo "== the disk's own ceiling for the same durability (same run, no HTTP): create 20 KB, fdatasync, rename, fsync folder"
disk=$(cargo bench --locked --bench disk_ceiling -- "$work/disk-$tag" 2>/dev/null | grep '^disk:')
echo "$disk"
best=$(awk '{print $2}' <<<"$disk" | sort -n | tail -1)
awk -v u="$rps" -v d="$best" 'BEGIN { printf "uploads/s over the disk ceiling: %.2f\n", u / d }'
rm -rf "$work/disk-$tag"

echo "== one 1 GiB upload (raw body), RSS before and after, fresh server"
start_server
big=$work/big.json.gz
dd if=/dev/urandom of="$big" bs=1M count=1024 status=none
curl -fs -X POST "http://127.0.0.1:$port/api/sync/analysis/$run?filename=warm.json.gz" -H "X-Sync-API-Key: $key" \
  --data-binary '{}' >/dev/null
before=$(kib VmHWM)
start=$(date +%s.%N)
curl -fs -X POST "http://127.0.0.1:$port/api/sync/analysis/$run?filename=big.json.gz" -H "X-Sync-API-Key: $key" \
  -H 'Content-Type: application/gzip' -T "$big" >/dev/null
end=$(date +%s.%N)
after=$(kib VmHWM)
cmp -s "$big" "$replicas/bench/$run/analysisResults/big.json.gz" && same=identical || same=DIFFERENT
awk -v b="$before" -v a="$after" -v s="$start" -v e="$end" -v same="$same" 'BEGIN {
  printf "1 GiB upload: %.1f s, stored file %s, peak RSS %.1f -> %.1f MiB (+%.1f MiB)\n", e - s, same, b / 1024, a / 1024, (a - b) / 1024 }'
