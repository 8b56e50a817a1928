//! A recording fake of the host's kernel for the hub's unit tests: tunnels and the underlay set
//! in memory, every call recorded, and chosen calls made to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::host::{FoundTunnel, HostNetwork, TunnelChange};
use super::host_kernel::HostKernel;
use super::{DataplaneError, Result};

#[derive(Default)]
pub struct FakeHost {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (network, runner id) → (ifindex, remote).
    tunnels: BTreeMap<(String, u32), (u32, Ipv4Addr)>,
    underlay: BTreeSet<Ipv4Addr>,
    calls: Vec<String>,
    /// Calls whose recorded text starts with one of these fail.
    fail: Vec<String>,
    next_index: u32,
}

impl FakeHost {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make every later call whose record starts with `prefix` fail (e.g. `ensure_tunnel 3`).
    pub fn fail(&self, prefix: &str) {
        self.lock().fail.push(prefix.to_string());
    }

    /// A tunnel left in the kernel by an earlier run.
    pub fn leave_tunnel(&self, network: &str, id: u32, remote: Ipv4Addr) {
        let mut i = self.lock();
        i.next_index += 1;
        let index = 100 + i.next_index;
        i.tunnels.insert((network.to_string(), id), (index, remote));
    }

    /// Every call so far, in order (e.g. `ensure_tunnel default 1 192.0.2.11`).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn tunnels(&self) -> BTreeMap<(String, u32), Ipv4Addr> {
        self.lock()
            .tunnels
            .iter()
            .map(|(k, v)| (k.clone(), v.1))
            .collect()
    }

    pub fn underlay(&self) -> BTreeSet<Ipv4Addr> {
        self.lock().underlay.clone()
    }

    fn record(&self, call: String) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let mut i = self.lock();
        let failing = i.fail.iter().any(|f| call.starts_with(f.as_str()));
        i.calls.push(call.clone());
        if failing {
            return Err(DataplaneError::Invalid(format!("{call}: injected failure")));
        }
        Ok(i)
    }
}

#[async_trait::async_trait]
impl HostKernel for FakeHost {
    async fn setup(&self, networks: &[HostNetwork], underlay: BTreeSet<Ipv4Addr>) -> Result<()> {
        let names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
        let mut i = self.record(format!("setup {}", names.join(",")))?;
        i.underlay = underlay;
        Ok(())
    }
    async fn scan_tunnels(&self, net: &HostNetwork) -> Result<BTreeMap<u32, FoundTunnel>> {
        let i = self.record(format!("scan_tunnels {}", net.name))?;
        Ok(i.tunnels
            .iter()
            .filter(|((n, _), _)| *n == net.name)
            .map(|((_, id), (index, remote))| {
                (
                    *id,
                    FoundTunnel {
                        runner_id: *id,
                        ifindex: *index,
                        remote: Some(*remote),
                    },
                )
            })
            .collect())
    }
    async fn ensure_tunnel(
        &self,
        net: &HostNetwork,
        id: u32,
        remote: Ipv4Addr,
    ) -> Result<(u32, TunnelChange)> {
        let mut i = self.record(format!("ensure_tunnel {} {id} {remote}", net.name))?;
        let key = (net.name.clone(), id);
        match i.tunnels.get(&key).copied() {
            Some((index, r)) if r == remote => Ok((index, TunnelChange::Unchanged)),
            Some((index, _)) => {
                i.tunnels.insert(key, (index, remote));
                Ok((index, TunnelChange::Repaired))
            }
            None => {
                i.next_index += 1;
                let index = 100 + i.next_index;
                i.tunnels.insert(key, (index, remote));
                Ok((index, TunnelChange::Created))
            }
        }
    }
    async fn remove_tunnel(&self, net: &HostNetwork, id: u32) -> Result<()> {
        let mut i = self.record(format!("remove_tunnel {} {id}", net.name))?;
        i.tunnels.remove(&(net.name.clone(), id));
        Ok(())
    }
    async fn set_underlay(&self, peers: BTreeSet<Ipv4Addr>) -> Result<()> {
        let mut i = self.record(format!("set_underlay {}", peers.len()))?;
        i.underlay = peers;
        Ok(())
    }
    async fn add_underlay(&self, peer: Ipv4Addr) -> Result<()> {
        let mut i = self.record(format!("add_underlay {peer}"))?;
        i.underlay.insert(peer);
        Ok(())
    }
    async fn tunnel_indexes(&self, net: &HostNetwork) -> Result<BTreeMap<String, u32>> {
        let i = self.record(format!("tunnel_indexes {}", net.name))?;
        Ok(i.tunnels
            .iter()
            .filter(|((n, _), _)| *n == net.name)
            .map(|((_, id), (index, _))| {
                (crate::plan::tunnel_name(&net.tunnel_prefix, *id), *index)
            })
            .collect())
    }
}
