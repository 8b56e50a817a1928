#!/usr/bin/env bash
# Generate what the Debian package ships beside the binary, from the built binary itself:
# shell completions (`weir completion bash|zsh|fish`) and man pages (`weir man --dir`).
# cargo-deb picks them up from STAGING_DIR (core/Cargo.toml, [package.metadata.deb]).
#
#   deploy/deb/stage.sh WEIR_BINARY [STAGING_DIR]   (default: target/deb-staging)
#   cargo deb -p weir --no-build …
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?usage: deploy/deb/stage.sh WEIR_BINARY [STAGING_DIR]}
out=${2:-target/deb-staging}
fail() { echo "deploy/deb/stage.sh: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin is not an executable"
rm -rf "$out"
mkdir -p "$out/completions" "$out/man"
for shell in bash zsh fish; do
  "$bin" completion "$shell" >"$out/completions/weir.$shell" \
    || fail "'$bin completion $shell' failed: the package needs it"
  [ -s "$out/completions/weir.$shell" ] || fail "'$bin completion $shell' printed nothing"
done
"$bin" man --dir "$out/man" || fail "'$bin man --dir $out/man' failed: the package needs it"
ls "$out"/man/weir.1 >/dev/null 2>&1 || fail "'$bin man --dir' wrote no weir.1"
gzip -9n "$out"/man/*.1
