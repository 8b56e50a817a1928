# shellcheck shell=bash
# promtool (core/tests/telemetry.rs checks the host's and a runner's /metrics with `promtool
# check metrics`; deploy/'s alert rules and scrape config are checked with it too). Debian's
# `prometheus` package carries /usr/bin/promtool, but installing it would enable and start a
# Prometheus server on the machine: the package is only downloaded and unpacked into a cache
# outside the clone, once per machine. Tests find it at $WEIR_PROMTOOL or this path.
PROMTOOL_ROOT=/var/cache/weir/prometheus
PROMTOOL="$PROMTOOL_ROOT/usr/bin/promtool"
if ! "$PROMTOOL" --version >/dev/null 2>&1; then
  echo "bootstrap: unpacking Debian's prometheus package into $PROMTOOL_ROOT (for promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  promtool_tmp=$(mktemp -d)
  chmod 755 "$promtool_tmp" # apt-get download fetches as the _apt user
  (cd "$promtool_tmp" && apt-get download -qq prometheus >/dev/null)
  mkdir -p "$PROMTOOL_ROOT"
  dpkg-deb -x "$promtool_tmp"/prometheus_*.deb "$PROMTOOL_ROOT"
  rm -rf "$promtool_tmp"
  "$PROMTOOL" --version >/dev/null
fi
