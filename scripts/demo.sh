#!/usr/bin/env bash
# The main job: build weir and show the default address plan.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cargo build --quiet --bin weir
exec ./target/debug/weir plan 10.128.0.0/12/6/14 "$@"
