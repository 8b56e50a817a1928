#!/usr/bin/env bash
# The whole test suite: unit tests and the root-only integration tests that build real
# topologies in network namespaces. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
# The plugins the tests load (their own workspace, built for wasm32-wasip2).
(cd plugins && cargo build --quiet --release --target wasm32-wasip2)
# The plugins' own unit tests (their decision logic, on the host target).
(cd plugins && cargo test --quiet)
# The Python plugin example, as a component.
mkdir -p target/python-plugins
(cd examples/python-wasm-plugin && componentize-py -d ../../wit -w allocator-plugin componentize app \
  -o ../../target/python-plugins/required_label.wasm >/dev/null)
# The library's unit tests (the hub's and the agent's rules through fakes, the store, the
# parsers) need neither root nor namespaces: run them as nobody, so none of them can come to
# depend on either without this failing.
./scripts/unit-as-nobody.sh
# Everything else as root (the integration tests build namespaces). The tests execute the
# workspace's binaries (weir-cni is another package's, which nextest does not build).
cargo build --quiet --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast -E 'not (package(weir) & kind(lib))' "$@"
else
  exec cargo test --workspace --no-fail-fast --bins --tests "$@"
fi
