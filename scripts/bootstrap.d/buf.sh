# shellcheck shell=bash
# `buf curl` (core/tests/unix_socket_clients.rs): a third-party gRPC client that speaks gRPC over a
# unix socket with server reflection (v1 and v1alpha), standing in for grpcurl, which has no
# Debian 12 package and no npm or PyPI distribution carrying its binary. npm's @bufbuild/buf
# brings the binary in its platform package @bufbuild/buf-linux-x64; it is installed once per
# machine into a cache outside the clone. The test finds it at $WEIR_BUF or this path.
BUF_VERSION=1.75.0
BUF_ROOT=/var/cache/weir/buf
if [ "$("$BUF_ROOT/node_modules/@bufbuild/buf-linux-x64/bin/buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  have npm || {
    echo "bootstrap: installing npm (for buf)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends npm >/dev/null
  }
  echo "bootstrap: installing buf $BUF_VERSION into $BUF_ROOT" >&2
  mkdir -p "$BUF_ROOT"
  npm install --prefix "$BUF_ROOT" --silent --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
