#!/usr/bin/env bash
# Weir's benchmark suite: install what is missing, build release, run weir-bench.
# Run as root on Debian 12. Arguments go to weir-bench:
#   ./scripts/bench.sh                 every section, results into docs/benchmarks.md
#   ./scripts/bench.sh --quick         a smoke run with every N shrunk
#   ./scripts/bench.sh datapath scale  some sections only (attach policy datapath scale hub store memory concurrency engines)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (the benchmarks build network namespaces)" >&2
  exit 2
fi

# Debian packages: the reference CNI plugins, iperf3, ethtool, Docker and busybox for the engines
# section, etcd for the store section (plus what Weir itself needs).
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have iperf3 || need_pkgs+=(iperf3)
have ethtool || need_pkgs+=(ethtool)
have nft || need_pkgs+=(nftables)
have ip || need_pkgs+=(iproute2)
have ping || need_pkgs+=(iputils-ping)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need_pkgs+=(containernetworking-plugins)
have dockerd || need_pkgs+=(docker.io)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
# etcd 3.4 and etcdctl for the store section; protoc and protobuf's well-known types to build
# the etcd-client crate.
have etcd || need_pkgs+=(etcd-server)
have etcdctl || need_pkgs+=(etcd-client)
have protoc || need_pkgs+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_pkgs+=(libprotobuf-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "bench: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# Policy plugins are WebAssembly components.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "bench: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2 >/dev/null
fi
echo "bench: building the plugins and the release binaries" >&2
(cd plugins && cargo build --quiet --release --target wasm32-wasip2)
cargo build --quiet --release -p weir -p weir-cni -p weir-bench

exec target/release/weir-bench "$@"
