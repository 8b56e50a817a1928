//! A recording fake of [`RunnerKernel`] for unit tests of the agent's rules: links, bridges,
//! namespaces and the firewall live in memory, every call is recorded in order
//! ([`FakeRunnerKernel::calls`]), and a call can be told to fail ([`FakeRunnerKernel::fail`]).
//! Needs no root and touches no namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipnet::Ipv4Net;

use super::attach::{self, WorkloadIface};
use super::firewall::Firewall;
use super::netns::{NetnsError, NetnsPolicy, NsIdentity};
use super::runner::{BridgeChoice, RouteConfig, RunnerNetwork};
use super::runner_kernel::{InspectError, RunnerKernel};
use super::{DataplaneError, Result};

/// One call the agent made, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ApplyNetworks(Vec<String>),
    SetUnderlay(Vec<Ipv4Addr>),
    Tracking(bool),
    Routes {
        network: String,
        direct: Vec<u32>,
        via_host_egress: bool,
    },
    Teardown,
    BridgeFor {
        network: String,
        port: String,
    },
    BridgeFull(u32),
    PortFreed(u32),
    WorkloadLinks,
    RemoveLink(u32),
    AttachContainer {
        workload: String,
        bridge: u32,
        expected: Option<NsIdentity>,
        /// Whether the new interface announces its address (gratuitous ARP).
        announce: bool,
    },
    AttachTap {
        name: String,
        bridge: u32,
    },
    DetachMany(Vec<(String, String)>),
    /// A firewall commit: whether the table is wanted, and (if so) its script.
    CommitFirewall {
        table: bool,
        script: String,
    },
    Identity(PathBuf),
    Inspect(PathBuf),
    DefaultRoute,
}

/// A call to make fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOn {
    /// Attaching (container or tap) workload `0` fails (nothing is created).
    Attach(String),
    /// Bridge `0` (by name) refuses ports ([`DataplaneError::BridgeFull`]).
    BridgeFull(String),
    /// Every bridge refuses ports.
    AllBridgesFull,
    ApplyNetworks,
    DetachMany,
    CommitFirewall,
    Tracking,
    Routes,
    Underlay,
    WorkloadLinks,
}

/// A link of the fake kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub master: Option<u32>,
    /// A veth's peer: the namespace it is in and its address there.
    pub inside: Option<(PathBuf, Ipv4Net)>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    failures: Vec<FailOn>,
    next_index: u32,
    links: BTreeMap<u32, FakeLink>,
    /// Bridges by name; a network's overflow bridges by network.
    bridges: BTreeMap<String, u32>,
    overflow: BTreeMap<String, Vec<u32>>,
    /// Ports counted per bridge; bridges the agent said were full.
    ports: BTreeMap<u32, i64>,
    believed_full: BTreeSet<u32>,
    /// Namespaces by path.
    namespaces: BTreeMap<PathBuf, NsIdentity>,
    next_ino: u64,
    networks: Vec<String>,
    tracking: Option<bool>,
    /// The last firewall commit: (table wanted, script).
    firewall: Option<(bool, String)>,
    default_route: Option<String>,
}

/// The fake kernel. Shared with the agent as `Arc<FakeRunnerKernel>`.
#[derive(Debug)]
pub struct FakeRunnerKernel {
    s: Mutex<State>,
}

impl Default for FakeRunnerKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRunnerKernel {
    pub fn new() -> Self {
        let s = State {
            next_index: 100,
            next_ino: 4026531000,
            default_route: Some("eth0".into()),
            ..State::default()
        };
        Self { s: Mutex::new(s) }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.s.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `call`; fail with `on`'s error if told to.
    fn record(&self, call: Call, on: Option<FailOn>) -> Result<()> {
        let mut s = self.st();
        s.calls.push(call);
        match on {
            Some(on) if s.failures.contains(&on) => Err(DataplaneError::Invalid(format!(
                "fake kernel: {on:?} fails"
            ))),
            _ => Ok(()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    /// Forget the calls so far.
    pub fn clear_calls(&self) {
        self.st().calls.clear();
    }

    /// Make `on` fail from now on (until [`Self::heal`]).
    pub fn fail(&self, on: FailOn) {
        self.st().failures.push(on);
    }

    /// Nothing fails any more.
    pub fn heal(&self) {
        self.st().failures.clear();
    }

    /// A new network namespace at `path`; returns its identity.
    pub fn add_namespace(&self, path: impl AsRef<Path>) -> NsIdentity {
        let mut s = self.st();
        s.next_ino += 1;
        let id = NsIdentity {
            dev: 4,
            ino: s.next_ino,
        };
        s.namespaces.insert(path.as_ref().to_path_buf(), id);
        id
    }

    /// The namespace at `path` is deleted: the path is gone and so are the veths inside it.
    pub fn delete_namespace(&self, path: impl AsRef<Path>) {
        let mut s = self.st();
        let path = path.as_ref();
        s.namespaces.remove(path);
        let inside: Vec<u32> = s
            .links
            .values()
            .filter(|l| l.inside.as_ref().is_some_and(|(p, _)| p == path))
            .map(|l| l.index)
            .collect();
        for i in inside {
            s.links.remove(&i);
        }
    }

    /// The path no longer names a namespace (its bind mount was removed), but the namespace
    /// lives on (a process holds it), and so does its veth.
    pub fn unmount_namespace(&self, path: impl AsRef<Path>) {
        self.st().namespaces.remove(path.as_ref());
    }

    /// Another namespace is bound at `path` now; returns its identity.
    pub fn replace_namespace(&self, path: impl AsRef<Path>) -> NsIdentity {
        self.add_namespace(path)
    }

    /// Namespace `id` is bound at `path` (again).
    pub fn bind_namespace(&self, path: impl AsRef<Path>, id: NsIdentity) {
        self.st().namespaces.insert(path.as_ref().to_path_buf(), id);
    }

    /// Link `name` disappears (with its peer).
    pub fn remove_link_named(&self, name: &str) {
        self.st().links.retain(|_, l| l.name != name);
    }

    /// Another link with Weir's alias (left by an earlier runner process).
    pub fn add_workload_link(&self, network: &str, workload: &str) -> u32 {
        let mut s = self.st();
        let index = s.take_index();
        s.links.insert(
            index,
            FakeLink {
                index,
                name: attach::host_ifname(network, workload),
                alias: Some(attach::alias(network, workload)),
                master: None,
                inside: None,
            },
        );
        index
    }

    /// The links the fake kernel has.
    pub fn links(&self) -> Vec<FakeLink> {
        self.st().links.values().cloned().collect()
    }

    /// The workload links (`(network, workload)`) the fake kernel has.
    pub fn workloads(&self) -> BTreeSet<(String, String)> {
        self.st()
            .links
            .values()
            .filter_map(|l| {
                let (n, w) = l
                    .alias
                    .as_deref()?
                    .strip_prefix(attach::ALIAS_PREFIX)?
                    .split_once('/')?;
                Some((n.to_string(), w.to_string()))
            })
            .collect()
    }

    /// The ifindex of bridge `name` (made by an apply, or an overflow bridge).
    pub fn bridge(&self, name: &str) -> Option<u32> {
        self.st().bridges.get(name).copied()
    }

    /// Ports counted on bridge `index`.
    pub fn ports(&self, index: u32) -> i64 {
        self.st().ports.get(&index).copied().unwrap_or(0)
    }

    /// The networks last applied.
    pub fn networks(&self) -> Vec<String> {
        self.st().networks.clone()
    }

    /// The last overlay-tracking setting.
    pub fn tracking(&self) -> Option<bool> {
        self.st().tracking
    }

    /// The last firewall commit: whether a table is wanted, and its script.
    pub fn firewall(&self) -> Option<(bool, String)> {
        self.st().firewall.clone()
    }

    /// Without a default route (`None`), finding the uplink fails.
    pub fn set_default_route(&self, ifname: Option<&str>) {
        self.st().default_route = ifname.map(str::to_string);
    }
}

impl State {
    fn take_index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn refuses(&self, bridge: u32) -> bool {
        self.failures.iter().any(|f| match f {
            FailOn::AllBridgesFull => true,
            FailOn::BridgeFull(name) => self.bridges.get(name) == Some(&bridge),
            _ => false,
        })
    }

    /// Create or repair a workload link on `bridge` (the port was counted by `bridge_for`).
    fn plug(
        &mut self,
        name: &str,
        alias: String,
        bridge: u32,
        inside: Option<(PathBuf, Ipv4Net)>,
    ) -> Result<()> {
        if let Some(l) = self.links.values_mut().find(|l| l.name == name) {
            if l.alias.as_ref() != Some(&alias) {
                return Err(DataplaneError::Invalid(format!(
                    "interface {name} belongs to {:?}, not {alias}",
                    l.alias
                )));
            }
            l.master = Some(bridge);
            if inside.is_some() {
                l.inside = inside;
            }
            return Ok(());
        }
        let index = self.take_index();
        self.links.insert(
            index,
            FakeLink {
                index,
                name: name.to_string(),
                alias: Some(alias),
                master: Some(bridge),
                inside,
            },
        );
        Ok(())
    }
}

#[async_trait::async_trait]
impl RunnerKernel for FakeRunnerKernel {
    async fn apply_networks(&self, networks: &[RunnerNetwork]) -> Result<()> {
        let names: Vec<String> = networks.iter().map(|n| n.name.clone()).collect();
        self.record(
            Call::ApplyNetworks(names.clone()),
            Some(FailOn::ApplyNetworks),
        )?;
        let mut s = self.st();
        for n in networks {
            if !s.bridges.contains_key(&n.bridge) {
                let i = s.take_index();
                s.bridges.insert(n.bridge.clone(), i);
            }
        }
        s.networks = names;
        Ok(())
    }

    async fn set_underlay(&self, peers: Vec<Ipv4Addr>) -> Result<()> {
        self.record(Call::SetUnderlay(peers), Some(FailOn::Underlay))
    }

    async fn set_overlay_tracking(&self, track: bool) -> Result<()> {
        self.record(Call::Tracking(track), Some(FailOn::Tracking))?;
        self.st().tracking = Some(track);
        Ok(())
    }

    async fn apply_routes(&self, net: &RunnerNetwork, cfg: &RouteConfig) -> Result<()> {
        self.record(
            Call::Routes {
                network: net.name.clone(),
                direct: cfg.direct.iter().map(|p| p.runner_id).collect(),
                via_host_egress: cfg.via_host_egress,
            },
            Some(FailOn::Routes),
        )
    }

    async fn teardown(&self) -> Result<()> {
        self.record(Call::Teardown, None)?;
        let mut s = self.st();
        s.bridges.clear();
        s.overflow.clear();
        s.networks.clear();
        s.firewall = None;
        Ok(())
    }

    async fn bridge_for(&self, net: &RunnerNetwork, port: &str) -> Result<BridgeChoice> {
        self.record(
            Call::BridgeFor {
                network: net.name.clone(),
                port: port.to_string(),
            },
            None,
        )?;
        let mut s = self.st();
        let main = *s.bridges.get(&net.bridge).ok_or_else(|| {
            DataplaneError::Invalid(format!("bridge {} does not exist", net.bridge))
        })?;
        let overflow = s.overflow.get(&net.name).cloned().unwrap_or_default();
        if let Some(m) = s
            .links
            .values()
            .find(|l| l.name == port)
            .and_then(|l| l.master)
            && (m == main || overflow.contains(&m))
        {
            return Ok(BridgeChoice {
                index: m,
                counted: false,
            });
        }
        let chosen = match std::iter::once(main)
            .chain(overflow)
            .find(|b| !s.believed_full.contains(b))
        {
            Some(b) => b,
            None => {
                let index = s.take_index();
                let k = s.overflow.values().map(Vec::len).sum::<usize>();
                s.bridges.insert(format!("wbx{k}"), index);
                s.overflow.entry(net.name.clone()).or_default().push(index);
                index
            }
        };
        *s.ports.entry(chosen).or_default() += 1;
        Ok(BridgeChoice {
            index: chosen,
            counted: true,
        })
    }

    async fn bridge_full(&self, index: u32) {
        let _ = self.record(Call::BridgeFull(index), None);
        self.st().believed_full.insert(index);
    }

    async fn port_freed(&self, index: u32) {
        let _ = self.record(Call::PortFreed(index), None);
        *self.st().ports.entry(index).or_default() -= 1;
    }

    async fn workload_links(&self) -> Result<Vec<(String, u32)>> {
        self.record(Call::WorkloadLinks, Some(FailOn::WorkloadLinks))?;
        Ok(self
            .st()
            .links
            .values()
            .filter_map(|l| {
                let a = l.alias.clone()?;
                a.starts_with(attach::ALIAS_PREFIX).then_some((a, l.index))
            })
            .collect())
    }

    async fn remove_link(&self, index: u32) -> Result<()> {
        self.record(Call::RemoveLink(index), None)?;
        self.st().links.remove(&index);
        Ok(())
    }

    async fn attach_container(
        &self,
        iface: &WorkloadIface,
        _policy: &NetnsPolicy,
        expected: Option<NsIdentity>,
    ) -> Result<NsIdentity> {
        self.record(
            Call::AttachContainer {
                workload: iface.workload.clone(),
                bridge: iface.bridge,
                expected,
                announce: iface.announce,
            },
            Some(FailOn::Attach(iface.workload.clone())),
        )?;
        let mut s = self.st();
        let Some(id) = s.namespaces.get(&iface.netns).copied() else {
            return Err(DataplaneError::Netns(NetnsError::Io {
                path: iface.netns.clone(),
                what: "open",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            }));
        };
        if let Some(expected) = expected
            && expected != id
        {
            return Err(DataplaneError::NetnsReplaced {
                path: iface.netns.clone(),
                expected,
                found: id,
            });
        }
        if s.refuses(iface.bridge) {
            return Err(DataplaneError::BridgeFull(iface.bridge));
        }
        s.plug(
            &iface.host_ifname(),
            iface.alias(),
            iface.bridge,
            Some((iface.netns.clone(), iface.addr)),
        )?;
        Ok(id)
    }

    async fn attach_tap(&self, name: &str, alias: &str, bridge: u32, _mtu: u32) -> Result<()> {
        let workload = alias.rsplit_once('/').map(|(_, w)| w.to_string());
        self.record(
            Call::AttachTap {
                name: name.to_string(),
                bridge,
            },
            workload.map(FailOn::Attach),
        )?;
        let mut s = self.st();
        if s.refuses(bridge) {
            return Err(DataplaneError::BridgeFull(bridge));
        }
        s.plug(name, alias.to_string(), bridge, None)
    }

    async fn attach_handoff(
        &self,
        host: &str,
        _peer: &str,
        alias: &str,
        bridge: u32,
        mtu: u32,
        _macs: [[u8; 6]; 2],
    ) -> Result<()> {
        // Recorded as the bridge end it is: a port like a VM's tap.
        self.attach_tap(host, alias, bridge, mtu).await
    }

    async fn detach_many(&self, workloads: &[(String, String)], _group: u32) -> Result<Vec<u32>> {
        self.record(
            Call::DetachMany(workloads.to_vec()),
            Some(FailOn::DetachMany),
        )?;
        let mut s = self.st();
        let wanted: BTreeMap<String, String> = workloads
            .iter()
            .flat_map(|(n, w)| {
                let owner = attach::alias(n, w);
                [
                    (attach::host_ifname(n, w), owner.clone()),
                    (attach::tap_ifname(n, w), owner),
                ]
            })
            .collect();
        let doomed: Vec<u32> = s
            .links
            .values()
            .filter(|l| l.alias.is_some() && wanted.get(&l.name) == l.alias.as_ref())
            .map(|l| l.index)
            .collect();
        let mut masters = Vec::new();
        for i in doomed {
            if let Some(l) = s.links.remove(&i) {
                masters.extend(l.master);
            }
        }
        Ok(masters)
    }

    async fn foreign_ports(
        &self,
        _net: &RunnerNetwork,
        _policy: &NetnsPolicy,
    ) -> Result<(
        Vec<super::adopt::ForeignPort>,
        Vec<super::adopt::Unadoptable>,
    )> {
        Ok((Vec::new(), Vec::new()))
    }

    async fn take_over(
        &self,
        _port: &str,
        _name: &str,
        _alias: &str,
        _bridge: &str,
    ) -> Result<u32> {
        Ok(0)
    }

    async fn give_back_adopted(
        &self,
        workloads: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        // The fake makes every interface itself: nothing is adopted.
        Ok(workloads.to_vec())
    }

    async fn address_in_use(
        &self,
        _bridge: u32,
        _ip: std::net::Ipv4Addr,
        _own: [u8; 6],
    ) -> Result<Option<[u8; 6]>> {
        Ok(None)
    }

    async fn commit_firewall(&self, fw: &mut Firewall) -> Result<()> {
        let table = fw.needs_table();
        let script = if table { fw.script() } else { String::new() };
        self.record(
            Call::CommitFirewall {
                table,
                script: script.clone(),
            },
            Some(FailOn::CommitFirewall),
        )?;
        self.st().firewall = Some((table, script));
        Ok(())
    }

    fn namespace_identity(&self, path: &Path) -> Result<NsIdentity> {
        self.record(Call::Identity(path.to_path_buf()), None)?;
        self.st().namespaces.get(path).copied().ok_or_else(|| {
            DataplaneError::io(
                "stat namespace",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    async fn namespace_veth_addrs(
        &self,
        path: &Path,
    ) -> std::result::Result<Vec<Vec<Ipv4Net>>, InspectError> {
        let _ = self.record(Call::Inspect(path.to_path_buf()), None);
        let s = self.st();
        if !s.namespaces.contains_key(path) {
            return Err(InspectError::Enter(DataplaneError::io(
                format!("open netlink socket in {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )));
        }
        Ok(s.links
            .values()
            .filter_map(|l| match &l.inside {
                Some((p, addr)) if p == path => Some(vec![*addr]),
                _ => None,
            })
            .collect())
    }

    async fn default_route_interface(&self) -> Result<String> {
        self.record(Call::DefaultRoute, None)?;
        self.st().default_route.clone().ok_or_else(|| {
            DataplaneError::Invalid(
                "no default route to find the uplink by; set runner.uplink".into(),
            )
        })
    }
}
