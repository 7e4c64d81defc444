#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what is missing, starts the services the tests
# need (PostgreSQL), then runs formatting, lints and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services: scripts/services.sh starts PostgreSQL if none answers and prints the env to use.
eval "$(scripts/services.sh)"
export CI="${CI:-false}"

echo "--- cargo fmt --check" >&2
cargo fmt --all --check
echo "--- cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "--- tests" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
