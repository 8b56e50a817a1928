# shellcheck shell=bash
# The shells whose completion scripts core/tests/cli.rs loads and runs (`weir completion
# bash|zsh|fish`; bash is always there), and groff, which checks `weir man`'s pages.
cli_pkgs=()
have zsh || cli_pkgs+=(zsh)
have fish || cli_pkgs+=(fish)
have groff || cli_pkgs+=(groff-base)
if [ ${#cli_pkgs[@]} -gt 0 ]; then
  echo "bootstrap: installing ${cli_pkgs[*]} (completion and man page tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${cli_pkgs[@]}" >/dev/null
fi
