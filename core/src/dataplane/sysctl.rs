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

/// Let bridged IPv4 traffic through the inet hooks (and connection tracking), so the firewall
/// sees workload traffic that never gets routed (same bridge, or arriving over `vxlan0`).
pub fn enable_bridge_netfilter() -> Result<()> {
    const PATH: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(PATH, b"1")
            .map_err(|e| DataplaneError::io("enable bridge-nf-call-iptables", e)),
        Err(e) => Err(DataplaneError::io(
            "read net.bridge.bridge-nf-call-iptables (this kernel needs br_netfilter for workload firewalls)",
            e,
        )),
    }
}

/// Stop sending ICMP redirects (globally and on `ifname`): a runner routing a workload's
/// packet back out of its bridge must not teach the workload to bypass it — the runner's
/// forward hook is where its firewall and routing decisions apply.
pub fn disable_redirects(ifname: &str) -> Result<()> {
    for conf in ["all", ifname] {
        let path = format!("/proc/sys/net/ipv4/conf/{conf}/send_redirects");
        if std::fs::read_to_string(&path)
            .map(|v| v.trim() == "0")
            .unwrap_or(false)
        {
            continue;
        }
        std::fs::write(&path, b"0")
            .map_err(|e| DataplaneError::io(format!("disable {path}"), e))?;
    }
    Ok(())
}

/// How long the host waits before asking again for a workload's MAC over a runner's tunnel
/// (`net.ipv4.neigh.<tunnel>.retrans_time_ms`; the kernel's default is 1 s). After a failover
/// the new hub asks as soon as the first runner's traffic reaches it, often before the
/// workload's own runner has re-pointed its tunnel: that answer goes to the old hub and is
/// lost, and at 1 s the cross-runner path would stay down a second longer than it needs to.
pub const TUNNEL_ARP_RETRANS_MS: u32 = 100;

/// Set `net.ipv4.neigh.<ifname>.retrans_time_ms` to `ms` if it differs.
pub fn set_arp_retrans(ifname: &str, ms: u32) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/neigh/{ifname}/retrans_time_ms");
    let want = ms.to_string();
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == want) {
        return Ok(());
    }
    std::fs::write(&path, want.as_bytes()).map_err(|e| DataplaneError::io(format!("set {path}"), e))
}

/// Answer ARP on `ifname` for addresses routed out of another interface
/// (`net.ipv4.conf.<ifname>.proxy_arp = 1`).
pub fn enable_proxy_arp(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/proxy_arp");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(&path, b"1").map_err(|e| DataplaneError::io(format!("set {path}"), e))
}
