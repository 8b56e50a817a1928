#!/usr/bin/env bash
# Install what building and testing Weir needs on a fresh Debian 12 machine (as root).
# Idempotent: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have nft || need_pkgs+=(nftables)
have ip || need_pkgs+=(iproute2)
have ping || need_pkgs+=(iputils-ping)
have python3 || need_pkgs+=(python3 python3-pip)
# Container-engine tests (core/tests/common/podman.rs): podman 4.3 with its CNI backend and
# runc (crun fails here), the reference CNI plugins, and busybox-static for the image rootfs.
have podman || need_pkgs+=(podman)
have runc || need_pkgs+=(runc)
[ -x /usr/lib/cni/bridge ] || need_pkgs+=(containernetworking-plugins)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
# core/tests/cnitool (a libcni CLI, built offline with GO111MODULE=off GOPATH=…:/usr/share/gocode).
have go || need_pkgs+=(golang-go)
[ -d /usr/share/gocode/src/github.com/containernetworking/cni/libcni ] || need_pkgs+=(golang-github-appc-cni-dev)
# Docker 20.10 (brings containerd 1.6 with its CRI plugin, and ctr): the Docker driver and CRI
# tests start their own dockerd/containerd inside test namespaces; nothing is started here.
have dockerd || need_pkgs+=(docker.io)
have containerd || need_pkgs+=(containerd)
# etcd 3.4 and etcdctl: the store tests and the etcd back end (servers from core/src/lab/etcd.rs).
have etcd || need_pkgs+=(etcd-server)
have etcdctl || need_pkgs+=(etcd-client)
# netavark 2.1 (below) is built from crates.io and needs protoc.
have protoc || need_pkgs+=(protobuf-compiler)
# The etcd-client crate compiles etcd's protos, which import protobuf's well-known types.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_pkgs+=(libprotobuf-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The Python scheduler example and its tests need grpcio, grpcio-tools and (for traces) the
# OpenTelemetry SDK with its OTLP/gRPC exporter.
if ! python3 -c "import grpc, grpc_tools, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc" >/dev/null 2>&1; then
  echo "bootstrap: installing grpcio, grpcio-tools and the OpenTelemetry SDK" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -r examples/python-scheduler/requirements.txt
fi
# The Python plugin example is compiled to a component with componentize-py.
if ! command -v componentize-py >/dev/null 2>&1; then
  echo "bootstrap: installing componentize-py" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore componentize-py
fi

# Policy plugins are WebAssembly components.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "bootstrap: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2 >/dev/null
fi

# netavark >= 1.6 runs plugins (Debian's 1.4 does not): netavark 2.1 from crates.io, built once
# per machine into a cache outside the clone (~7 min on 2 cores), so later runs reuse it. The
# netavark test finds it at $WEIR_NETAVARK or this path.
NETAVARK_ROOT=/var/cache/weir/netavark-2.1
if [ ! -x "$NETAVARK_ROOT/bin/netavark" ]; then
  echo "bootstrap: building netavark 2.1 into $NETAVARK_ROOT (once per machine)" >&2
  mkdir -p /var/cache/weir
  CARGO_TARGET_DIR=/var/cache/weir/netavark-build \
    cargo install --quiet --locked netavark --version '~2.1' --root "$NETAVARK_ROOT"
  rm -rf /var/cache/weir/netavark-build
fi

# Tools of single test areas, one file each (sourced, in name order; same rules: idempotent,
# install only what is missing).
for part in scripts/bootstrap.d/*.sh; do
  [ -e "$part" ] || continue
  # shellcheck source=/dev/null
  . "$part"
done
