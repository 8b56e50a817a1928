//! Test plugin `escape`: tries to read a file and open a socket. The host gives plugins no
//! ambient capabilities, so both must fail, and the plugin then panics (a contained fault).
//! Should either succeed, it answers `deny("ESCAPED: …")`, which a test catches.

use weir_plugin_sdk::prelude::*;

struct Escape;

impl Plugin for Escape {
    fn configure(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

impl Allocator for Escape {
    fn assign_runner(_request: RunnerRequest) -> RunnerDecision {
        RunnerDecision::Deny(try_escape())
    }

    fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
        AddressDecision::Deny(try_escape())
    }
}

weir_plugin_sdk::export_allocator!(Escape);

/// Returns the "ESCAPED" reason if the sandbox leaks; panics if it holds.
fn try_escape() -> String {
    let file = std::fs::read_to_string("/etc/hostname");
    let socket = std::net::TcpStream::connect("127.0.0.1:7700");
    match (file, socket) {
        (Ok(content), _) => format!("ESCAPED: read /etc/hostname: {:?}", content.trim()),
        (_, Ok(stream)) => format!("ESCAPED: connected to {:?}", stream.peer_addr().ok()),
        (Err(file), Err(socket)) => {
            panic!("no ambient capabilities: file: {file}; socket: {socket}")
        }
    }
}
