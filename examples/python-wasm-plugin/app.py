"""A Weir allocator plugin written in Python, compiled to a WebAssembly component with
componentize-py: runners must carry a label (default `role`) to join; a workload gets the
lowest free address of its runner's pool (one query of the host's pool, whatever the number of
workloads: addresses are numbers, 10.0.0.1 is 0x0a000001).

Build (see README.md):
  componentize-py -d ../../wit -w allocator-plugin componentize app -o required_label.wasm
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

SETTINGS = {"label": "role"}


class Plugin(exports.Plugin):
    def configure(self, config):
        for key, value in config:
            if key != "label":
                raise Err(f"unknown setting {key!r} (known: label)")
            if not value:
                raise Err("label must not be empty")
            SETTINGS["label"] = value
        host.log(host.Level.INFO, f"runners need the label {SETTINGS['label']!r}")


class Allocator(exports.Allocator):
    def assign_runner(self, request):
        wanted = SETTINGS["label"]
        if any(k == wanted for k, _ in request.labels):
            return types.RunnerDecision_Builtin()
        return types.RunnerDecision_Deny(f"runner {request.name} has no {wanted!r} label")

    def assign_address(self, request, pool):
        address = pool.next_free(request.first)
        if address is None or address > request.last:
            return types.AddressDecision_Deny(f"no free address left on runner {request.runner}")
        return types.AddressDecision_Address(address)
