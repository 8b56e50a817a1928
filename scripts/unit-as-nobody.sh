#!/usr/bin/env bash
# Build the weir library's unit tests and run them as an unprivileged user (nobody) with no
# capabilities: proof that the hub's and agent's rule tests need no root and no namespaces.
# Extra arguments go to the test binary (a name filter, e.g. `hub::`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo test --workspace --lib --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["name"] == "weir"
            and m["profile"]["test"] and m.get("executable")):
        print(m["executable"])
')
if [ -z "$bin" ]; then
  echo "unit-as-nobody: no weir unit-test binary was built" >&2
  cargo test --workspace --lib --no-run >&2
  exit 1
fi
uid=$(id -u nobody)
gid=$(id -g nobody)
echo "unit tests as nobody ($uid:$gid): $bin"
exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --no-new-privs \
  env -i PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp "$bin" "$@"
