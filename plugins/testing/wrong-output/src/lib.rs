//! Test plugin `wrong-output`: well-formed answers the host must refuse: an address outside
//! every runner subnet of the tests and a runner id beyond the plan.

use weir_plugin_sdk::prelude::*;

struct WrongOutput;

impl Plugin for WrongOutput {
    fn configure(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

impl Allocator for WrongOutput {
    fn assign_runner(request: RunnerRequest) -> RunnerDecision {
        RunnerDecision::Id(request.plan.max_runners.saturating_add(100))
    }

    fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
        AddressDecision::Address(num("10.255.255.254".parse().unwrap()))
    }
}

weir_plugin_sdk::export_allocator!(WrongOutput);
