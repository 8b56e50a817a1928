# shellcheck shell=bash
# cargo-deb (core/tests/deploy.rs builds the Debian package from the workspace with it). From
# crates.io, built once per machine with its build directory outside the clone. Pinned to the
# 3.8 series: the test builds from the debug build (`--profile dev`), which newer cargo-deb
# releases may refuse.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "bootstrap: installing cargo-deb" >&2
  mkdir -p /var/cache/weir
  CARGO_TARGET_DIR=/var/cache/weir/cargo-deb-build cargo install --quiet --locked cargo-deb --version '~3.8'
  rm -rf /var/cache/weir/cargo-deb-build
fi
