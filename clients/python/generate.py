#!/usr/bin/env python3
"""Generate weir_client.v1 (the gRPC stubs of proto/weir/v1/*.proto) with grpcio-tools.

The stubs are checked in, so installing the package needs neither protoc nor the proto files
(a wheel built from clients/python cannot reach ../../proto). Run this after changing a .proto:

  pip install -r requirements-dev.txt     # the pinned grpcio-tools: its output is what is checked in
  python3 generate.py                     # rewrite src/weir_client/v1/
  python3 generate.py --check             # exit 1 if the checked-in stubs differ (the tests do this)

protoc writes `from weir.v1 import control_pb2`; the modules live in `weir_client.v1`, so those
imports are rewritten to `from weir_client.v1 import …`. Nothing else is changed.
"""

import argparse
import difflib
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
OUT = os.path.join(HERE, "src", "weir_client", "v1")
PROTOS = ("agent", "control", "local", "policy")
# The generator the checked-in stubs come from (requirements-dev.txt pins the same).
GRPCIO_TOOLS = "1.66.2"
INIT = '"""The generated stubs of weir.v1 (proto/weir/v1/*.proto); see generate.py."""\n'


def generate(proto_root):
    """{file name: text} of every generated module."""
    from grpc_tools import protoc
    import grpc_tools

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    if version != GRPCIO_TOOLS:
        sys.exit(f"generate.py: grpcio-tools {version} is installed; the stubs are generated "
                 f"with {GRPCIO_TOOLS} (pip install -r requirements-dev.txt)")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    with tempfile.TemporaryDirectory(prefix="weir-stubs-") as out:
        files = [os.path.join("weir", "v1", f"{p}.proto") for p in PROTOS]
        rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                          f"--pyi_out={out}", f"--grpc_python_out={out}", *files])
        if rc != 0:
            sys.exit(f"generate.py: protoc failed ({rc}) on {proto_root}")
        gen = os.path.join(out, "weir", "v1")
        result = {"__init__.py": INIT}
        for name in sorted(os.listdir(gen)):
            with open(os.path.join(gen, name)) as f:
                text = f.read()
            result[name] = re.sub(r"^from weir\.v1 import ", "from weir_client.v1 import ",
                                  text, flags=re.M)
    return result


def checked_in():
    result = {}
    for name in sorted(os.listdir(OUT)):
        path = os.path.join(OUT, name)
        if os.path.isfile(path) and name.endswith((".py", ".pyi")):
            with open(path) as f:
                result[name] = f.read()
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proto", default=DEFAULT_PROTO, help="the proto root (holding weir/v1/)")
    ap.add_argument("--check", action="store_true", help="compare with the checked-in stubs; write nothing")
    args = ap.parse_args()
    fresh = generate(args.proto)
    if args.check:
        have = checked_in()
        diff = []
        for name in sorted(set(fresh) | set(have)):
            diff += difflib.unified_diff(have.get(name, "").splitlines(True), fresh.get(name, "").splitlines(True),
                                         f"checked-in/{name}", f"generated/{name}")
        if diff:
            sys.stdout.writelines(diff[:200])
            sys.exit("generate.py --check: the checked-in stubs differ from proto/ "
                     "(run clients/python/generate.py)")
        print(f"generate.py --check: {len(fresh)} files match {args.proto}")
        return
    os.makedirs(OUT, exist_ok=True)
    for name in checked_in():
        if name not in fresh:
            os.remove(os.path.join(OUT, name))
    for name, text in fresh.items():
        with open(os.path.join(OUT, name), "w") as f:
            f.write(text)
    print(f"generate.py: wrote {len(fresh)} files into {OUT}")


if __name__ == "__main__":
    main()
