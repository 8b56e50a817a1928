# shellcheck shell=bash
# The Python client package (clients/python; core/tests/python_client.rs) is installed by its
# test into a fresh venv, which needs python3 -m venv with ensurepip (Debian: python3-venv); pip
# fetches its dependencies from PyPI (pip's cache keeps them for the next run).
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  echo "bootstrap: installing python3-venv" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
# docs/api.md's grpcio commands for the unix socket (core/tests/unix_socket_clients.rs) use
# grpcio-health-checking next to grpcio: installed without moving the grpcio and protobuf the
# other Python examples already use.
if ! python3 -c "import grpc_health.v1.health_pb2_grpc" >/dev/null 2>&1; then
  echo "bootstrap: installing grpcio-health-checking" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    grpcio-health-checking \
    "grpcio==$(python3 -c 'import grpc; print(grpc.__version__)')" \
    "protobuf==$(python3 -c 'import google.protobuf as p; print(p.__version__)')"
fi
