#!/usr/bin/env bash
# Runs every test of evosync on a fresh Debian machine: installs what the tests need (openssh-server, the stock
# sqlite3_rsync >= 3.53.4 built from Debian's source package, the test accounts), then formatting, lints, and the unit,
# integration and compliance tests against a real sshd on loopback.
# Needs root (it installs packages, creates accounts and runs sshd); uses sudo when started as another user.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CI "$0" "$@"
fi

scripts/setup-test-env.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --locked "$@"
