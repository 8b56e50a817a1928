//! Test plugin `memory-bomb`: both hooks keep allocating and touching 1 MiB blocks until the
//! host's memory cap stops them (an allocation failure aborts, which traps).

use weir_plugin_sdk::prelude::*;

struct MemoryBomb;

impl Plugin for MemoryBomb {
    fn configure(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

impl Allocator for MemoryBomb {
    fn assign_runner(_request: RunnerRequest) -> RunnerDecision {
        hoard()
    }

    fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
        hoard()
    }
}

weir_plugin_sdk::export_allocator!(MemoryBomb);

const MIB: usize = 1 << 20;

fn hoard() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Non-zero bytes: every page is really written, not just reserved.
        let block = vec![0xA5u8; MIB];
        blocks.push(core::hint::black_box(block));
        core::hint::black_box(&mut blocks);
    }
}
