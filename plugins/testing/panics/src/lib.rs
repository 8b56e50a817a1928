//! Test plugin `panics`: both hooks panic (a trap the host must contain; the SDK reports the
//! message through the host's log first).

use weir_plugin_sdk::prelude::*;

struct Panics;

impl Plugin for Panics {
    fn configure(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

impl Allocator for Panics {
    fn assign_runner(_request: RunnerRequest) -> RunnerDecision {
        panic!("deliberate panic in a test plugin")
    }

    fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
        panic!("deliberate panic in a test plugin")
    }
}

weir_plugin_sdk::export_allocator!(Panics);
