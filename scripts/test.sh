#!/usr/bin/env bash
# The whole test suite: unit tests and the root-only integration tests that build real
# topologies in network namespaces. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
# The plugins the tests load (their own workspace, built for wasm32-wasip2).
(cd plugins && cargo build --quiet --release --target wasm32-wasip2)
# The plugins' own unit tests (their decision logic, on the host target).
(cd plugins && cargo test --quiet)
# The Python plugin example, as a component.
mkdir -p target/python-plugins
(cd examples/python-wasm-plugin && componentize-py -d ../../wit -w allocator-plugin componentize app \
  -o ../../target/python-plugins/required_label.wasm >/dev/null)
# The library's unit tests (the hub's and the agent's rules through fakes, the store, the
# parsers) need neither root nor namespaces: run them as nobody, so none of them can come to
# depend on either without this failing.
./scripts/unit-as-nobody.sh
# Everything else as root (the integration tests build namespaces). The tests execute the
# workspace's binaries (weir-cni is another package's, which nextest does not build).
cargo build --quiet --workspace --bins
# The same overlay tests (attach, reservations, restarts, networks) once more with the host's
# state on etcd (one member in the host's namespace; core/tests/common/mod.rs store_members).
etcd_tests=(
  overlay::workloads_reach_each_other_the_host_and_the_wan
  overlay::host_killed_and_restarted_under_ping_loses_at_most_one_packet
  overlay::runner_restart_keeps_id_subnet_addresses_and_rules
  overlay::attach_is_idempotent_conflicts_are_refused_and_detach_frees_the_address
  overlay::a_full_plan_reclaims_the_oldest_inactive_id_and_then_refuses
  control::reservations_follow_every_rule
  consistency::a_host_killed_in_a_burst_of_attaches_leaves_nothing_unannounced
  networks::a_workload_on_two_networks_reaches_each_through_its_own_interface
  networks::removing_a_network_removes_its_kernel_objects_and_leaves_the_other_alone
)
status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not (package(weir) & kind(lib))' "$@" || status=$?
  filter=""
  for t in "${etcd_tests[@]}"; do
    filter+="${filter:+ | }(binary(=${t%%::*}) & test(=${t#*::}))"
  done
  WEIR_TEST_STORE=etcd cargo nextest run -p weir --no-fail-fast -E "$filter" "$@" || status=$?
else
  cargo test --workspace --no-fail-fast --bins --tests "$@" || status=$?
  for t in "${etcd_tests[@]}"; do
    WEIR_TEST_STORE=etcd cargo test -p weir --test "${t%%::*}" -- --exact "${t#*::}" || status=$?
  done
fi
exit $status
