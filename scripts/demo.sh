#!/usr/bin/env bash
# The main job: build weir and run a whole cluster in network namespaces (a host, two runners
# with two workloads each, and a wan peer), print its status and connectivity, tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cargo build --quiet --bin weir
exec ./target/debug/weir lab demo "$@"
