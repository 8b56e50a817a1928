//! Test plugin `endless-loop`: both hooks spin forever, until the host's deadline stops them.

use weir_plugin_sdk::prelude::*;

struct EndlessLoop;

impl Plugin for EndlessLoop {
    fn configure(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

impl Allocator for EndlessLoop {
    fn assign_runner(_request: RunnerRequest) -> RunnerDecision {
        spin()
    }

    fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
        spin()
    }
}

weir_plugin_sdk::export_allocator!(EndlessLoop);

/// Never returns; `black_box` keeps the optimizer from reasoning the loop away.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n.wrapping_add(1));
    }
}
