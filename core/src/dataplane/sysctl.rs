//! The few sysctls the data plane needs. `/proc/sys/net` belongs to the namespace of the
//! process, which is the namespace the daemon configures.

use std::io;

use super::{DataplaneError, Result};

/// Enable IPv4 forwarding (`net.ipv4.ip_forward = 1`) if it is off.
pub fn enable_ip_forward() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let current = std::fs::read_to_string(PATH)
        .map_err(|e| DataplaneError::io("read net.ipv4.ip_forward", e))?;
    if current.trim() == "1" {
        return Ok(());
    }
    std::fs::write(PATH, b"1")
        .map_err(|e: io::Error| DataplaneError::io("enable net.ipv4.ip_forward", e))
}
