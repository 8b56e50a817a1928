//! rtnetlink, wrapped in the few operations Weir needs: links, addresses and routes of one
//! network namespace. Every call says what it was doing when it fails.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::{DataplaneError, Result, netns};

/// Routes Weir installs carry this protocol number, so reconcile can find (and remove) its own
/// stale routes without touching anybody else's. (`ip route` shows it as `proto 87`.)
pub const ROUTE_PROTOCOL: u8 = 87;
/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What Weir reads back about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The kind reported by the kernel (`vxlan`, `bridge`, `veth`, …); `None` for physical ones.
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub alias: Option<String>,
    /// The hardware address, when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
    pub vxlan: Option<Vxlan>,
    /// A veth's peer: its index in the peer's namespace (`IFLA_LINK`).
    pub peer_index: Option<u32>,
    /// The id (in this namespace) of the namespace the peer lives in, when that is another
    /// one (`IFLA_LINK_NETNSID`).
    pub peer_netnsid: Option<i32>,
}

/// A VXLAN link's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    pub remote: Option<Ipv4Addr>,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
}

/// A VXLAN link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub remote: Ipv4Addr,
    pub local: Ipv4Addr,
    pub port: u16,
    pub mtu: u32,
}

/// A policy routing rule (IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingRule {
    pub source: Option<Ipv4Net>,
    pub table: u32,
    pub priority: u32,
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub table: u32,
}

/// A veth pair `name` <-> `peer` with both ends at `mtu`, the peer created directly inside the
/// namespace open at `peer_ns`.
fn veth_into(
    name: &str,
    peer: &str,
    peer_ns: &impl AsRawFd,
    mtu: u32,
    peer_mac: Option<[u8; 6]>,
) -> LinkMessageBuilder<LinkVeth> {
    veth_pair(name, peer, Some(peer_ns.as_raw_fd()), mtu, peer_mac)
}

/// A veth pair `name` <-> `peer` at `mtu`; the peer in the namespace open at `peer_ns`, or
/// beside `name` without one.
fn veth_pair(
    name: &str,
    peer: &str,
    peer_ns: Option<std::os::fd::RawFd>,
    mtu: u32,
    peer_mac: Option<[u8; 6]>,
) -> LinkMessageBuilder<LinkVeth> {
    // The peer cannot be created up: the kernel opens it before the pair is joined
    // (veth_open answers ENOTCONN), so it is set up from inside.
    let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::default()
        .name(peer.to_string())
        .mtu(mtu);
    if let Some(fd) = peer_ns {
        peer_msg = peer_msg.setns_by_fd(fd);
    }
    if let Some(mac) = peer_mac {
        peer_msg = peer_msg.address(mac.to_vec());
    }
    let peer_msg = peer_msg.build();
    LinkVeth::new(name, peer)
        .set_info_data(InfoData::Veth(
            rtnetlink::packet_route::link::InfoVeth::Peer(peer_msg),
        ))
        .mtu(mtu)
}

impl Netlink {
    /// A connection in the calling process's own namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| DataplaneError::io("open netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection inside the namespace at `ns` (a `/run/netns/NAME` or `/proc/PID/ns/net`
    /// path). The socket is created on a thread inside that namespace and driven from tokio.
    pub fn in_namespace(ns: &Path) -> Result<Self> {
        Self::in_namespace_with(ns, || Ok(())).map(|(nl, ())| nl)
    }

    /// [`Netlink::in_namespace`], and `also` run inside the namespace on the same visit (e.g.
    /// to open another socket there).
    pub fn in_namespace_with<T: Send + 'static>(
        ns: &Path,
        also: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<(Self, T)> {
        let (fd, extra) = netns::run_in(ns, || {
            let fd = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
                .map(|s| s.into_raw_fd())?;
            match also() {
                Ok(extra) => Ok((fd, extra)),
                Err(e) => {
                    // SAFETY: `fd` was just created here and is owned by nothing else.
                    unsafe { libc::close(fd) };
                    Err(e)
                }
            }
        })
        .and_then(|r| r)
        .map_err(|e| DataplaneError::io(format!("open netlink socket in {}", ns.display()), e))?;
        // SAFETY: `fd` is a freshly created netlink socket that nothing else owns.
        let socket = unsafe {
            <rtnetlink::sys::TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd)
        };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok((Self { handle }, extra))
    }

    // ---- links -------------------------------------------------------------------------

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        // Each message is read into a `Link` and dropped: thousands of full link messages
        // (statistics and all) are never held at once.
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| parse_link(&m))
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink("list links", e))
    }

    /// The link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(parse_link)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(DataplaneError::netlink(format!("get link {name}"), e)),
        }
    }

    /// The link with index `index`, if it exists.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let res: std::result::Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(parse_link)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(DataplaneError::netlink(format!("get link #{index}"), e)),
        }
    }

    /// Create a bridge (up, with `mtu`).
    pub async fn add_bridge(&self, name: &str, mtu: u32) -> Result<Link> {
        let msg = LinkBridge::new(name).mtu(mtu).build();
        self.add_link(name, msg).await
    }

    /// Create a VXLAN link with learning off (up).
    pub async fn add_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        self.add_vxlan_with_mac(spec, None).await
    }

    /// Create a VXLAN link with learning off (up), with a chosen MAC address.
    pub async fn add_vxlan_with_mac(&self, spec: &VxlanSpec, mac: Option<[u8; 6]>) -> Result<Link> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni);
        if let Some(mac) = mac {
            b = b.address(mac.to_vec());
        }
        let msg = b
            .remote(spec.remote)
            .local(spec.local)
            .port(spec.port)
            .learning(false)
            .mtu(spec.mtu)
            .up()
            .build();
        self.add_link(&spec.name, msg).await
    }

    /// Change a VXLAN link's remote and local address in place (same ifindex, no flap), and
    /// turn learning off.
    pub async fn set_vxlan_endpoints(
        &self,
        index: u32,
        remote: Ipv4Addr,
        local: Ipv4Addr,
    ) -> Result<()> {
        let mut msg = LinkMessageBuilder::<LinkVxlan>::new_with_info_kind(InfoKind::Vxlan)
            .append_info_data(InfoVxlan::Group(remote))
            .append_info_data(InfoVxlan::Local(local))
            .append_info_data(InfoVxlan::Learning(false))
            .build();
        msg.header.index = index;
        self.handle.link().change(msg).execute().await.map_err(|e| {
            DataplaneError::netlink(format!("change vxlan endpoints of link #{index}"), e)
        })
    }

    /// Create a veth pair `name` <-> `peer`; the peer is created directly inside the namespace
    /// open at `peer_ns` (never created here and moved). Both ends get `mtu`; `name` is set up.
    pub async fn add_veth_into(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &impl AsRawFd,
        mtu: u32,
    ) -> Result<Link> {
        let msg = veth_into(name, peer, peer_ns, mtu, None).up().build();
        self.add_link(name, msg).await
    }

    /// Create a workload's veth pair in one request: `name` here, up, enslaved to `master`,
    /// with `peer` created inside the namespace open at `peer_ns`; then label `name` with
    /// `alias` (by name: no lookup). `Ok(false)` when `name` or, inside the namespace, `peer`
    /// already exists (nothing was changed). Every message about a veth whose peer lives in
    /// another namespace costs the kernel a walk over all namespace ids it knows, so with
    /// thousands of workloads each round trip saved counts.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_veth_port(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &impl AsRawFd,
        mtu: u32,
        master: u32,
        alias: &str,
        [mac, peer_mac]: [[u8; 6]; 2],
    ) -> Result<bool> {
        let msg = veth_into(name, peer, peer_ns, mtu, Some(peer_mac))
            .address(mac.to_vec())
            .controller(master)
            .up()
            .build();
        self.add_port(name, msg, master, alias).await
    }

    /// Create a veth pair `name` (up, MTU, MAC, on `master`, with `alias`) <-> `peer` (down,
    /// unconfigured but for its MAC) in this namespace, for a container engine to move the
    /// peer into its container. `false`: `name` or `peer` exists already (nothing was made).
    pub async fn create_veth_handoff(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        master: u32,
        alias: &str,
        [mac, peer_mac]: [[u8; 6]; 2],
    ) -> Result<bool> {
        let msg = veth_pair(name, peer, None, mtu, Some(peer_mac))
            .address(mac.to_vec())
            .controller(master)
            .up()
            .build();
        self.add_port(name, msg, master, alias).await
    }

    /// Create a bridge port from `msg` and give it its alias; `false`: it exists already.
    async fn add_port(
        &self,
        name: &str,
        msg: LinkMessage,
        master: u32,
        alias: &str,
    ) -> Result<bool> {
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => return Ok(false),
            Err(e) if is_errno(&e, libc::EXFULL) => return Err(DataplaneError::BridgeFull(master)),
            Err(e) => return Err(DataplaneError::netlink(format!("create link {name}"), e)),
        }
        let msg = LinkUnspec::new_with_name(name).alias(alias).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("set alias of link {name}"), e))?;
        Ok(true)
    }

    async fn add_link(&self, name: &str, msg: LinkMessage) -> Result<Link> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("create link {name}"), e))?;
        self.link(name).await?.ok_or_else(|| {
            DataplaneError::Invalid(format!("link {name} vanished right after creation"))
        })
    }

    /// Set a link up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            index,
            LinkUnspec::new_with_index(index).up().build(),
            "set up",
        )
        .await
    }

    /// Set a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            index,
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            "set mtu of",
        )
        .await
    }

    /// Set a link's alias (`ip link set … alias`).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        self.set(
            index,
            LinkUnspec::new_with_index(index).alias(alias).build(),
            "set alias of",
        )
        .await
    }

    /// Rename a link (`ip link set … name`). The kernel renames only a link that is down.
    pub async fn rename(&self, index: u32, name: &str) -> Result<()> {
        self.set(
            index,
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .build(),
            "rename",
        )
        .await
    }

    /// Set a link's hardware address (also when it is the one it has: the address then counts
    /// as chosen, so a bridge keeps it instead of taking its lowest port's).
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            index,
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            "set the hardware address of",
        )
        .await
    }

    /// Set a link down.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.set(
            index,
            LinkUnspec::new_with_index(index).down().build(),
            "set down",
        )
        .await
    }

    /// The hardware address the neighbour table holds for `ip` on link `index`, if it is
    /// resolved or being confirmed (failed and incomplete entries say nothing). One lookup
    /// (`RTM_GETNEIGH` for the address, not a dump): it costs the same with any number of
    /// neighbours.
    pub async fn neighbour_mac(&self, index: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        use futures::StreamExt;
        use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(|e| DataplaneError::netlink("look up a neighbour", e))?;
        while let Some(a) = answers.next().await {
            match a.payload {
                NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => return Ok(None),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(DataplaneError::netlink(
                        format!("look up neighbour {ip}"),
                        rtnetlink::Error::NetlinkError(e),
                    ));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => {
                    if matches!(
                        m.header.state,
                        NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
                    ) {
                        return Ok(None);
                    }
                    return Ok(m.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(v) => {
                            <[u8; 6]>::try_from(v.as_slice()).ok()
                        }
                        _ => None,
                    }));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Forget the neighbour entry for `ip` on link `index` (`ip neigh del`); a missing one is
    /// fine. The next packet to `ip` resolves it afresh.
    pub async fn neighbour_del(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(ip))];
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete neighbour {ip} on link #{index}"),
                e,
            )),
        }
    }

    /// The MACs bridge `bridge`'s forwarding database holds behind its ports now (learned or
    /// static): an entry goes when its port does.
    pub async fn bridge_macs(&self, bridge: u32) -> Result<Vec<[u8; 6]>> {
        use rtnetlink::packet_route::neighbour::NeighbourAttribute;
        Ok(self
            .bridge_family_entries("list the bridge's forwarding entries")
            .await?
            .iter()
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::Controller(b) if *b == bridge))
            })
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(v) => {
                        <[u8; 6]>::try_from(v.as_slice()).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Every forwarding entry of the bridge family (bridges' and VXLAN links').
    async fn bridge_family_entries(
        &self,
        what: &str,
    ) -> Result<Vec<rtnetlink::packet_route::neighbour::NeighbourMessage>> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink(what.to_string(), e))
    }

    /// The id this namespace knows the namespace open at `ns` by (`RTM_GETNSID` by
    /// descriptor); `None` when it has none (no link of this namespace points there).
    pub async fn nsid_of(&self, ns: &std::fs::File) -> Result<Option<i32>> {
        use futures::StreamExt;
        use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
        let mut msg = NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(ns.as_raw_fd() as u32)];
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(|e| DataplaneError::netlink("ask a namespace's id", e))?;
        while let Some(a) = answers.next().await {
            match a.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(DataplaneError::netlink(
                        "ask a namespace's id",
                        rtnetlink::Error::NetlinkError(e),
                    ));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    return Ok(m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Give `link` the alias `alias` unless it has it already.
    pub async fn ensure_alias(&self, link: &Link, alias: &str) -> Result<()> {
        if link.alias.as_deref() == Some(alias) {
            return Ok(());
        }
        self.set_alias(link.index, alias).await
    }

    /// Enslave a link to a bridge; [`DataplaneError::BridgeFull`] when it has no free port.
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EXFULL) => Err(DataplaneError::BridgeFull(master)),
            Err(e) => Err(DataplaneError::netlink(
                format!("set master of link #{index}"),
                e,
            )),
        }
    }

    async fn set(&self, index: u32, msg: LinkMessage, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("{what} link #{index}"), e))
    }

    /// Delete a link. A link that is already gone is not an error.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(format!("delete link #{index}"), e)),
        }
    }

    /// Delete several links in one kernel batch: they join device group `group`, then the
    /// group is deleted with one request (the kernel unregisters them together, paying its
    /// per-deletion synchronisation once instead of once per link). `group` must be one no
    /// other link uses (never 0, every link's default). Links already gone are skipped.
    pub async fn del_links(&self, indexes: &[u32], group: u32) -> Result<()> {
        match indexes {
            [] => return Ok(()),
            [one] => return self.del_link(*one).await,
            _ => {}
        }
        debug_assert_ne!(group, 0, "group 0 holds every link");
        for &index in indexes {
            let msg = LinkUnspec::new_with_index(index).link_group(group).build();
            match self.handle.link().set(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::ENODEV) => {}
                Err(e) => {
                    return Err(DataplaneError::netlink(
                        format!("put link #{index} in group {group}"),
                        e,
                    ));
                }
            }
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        match rtnetlink::LinkDelRequest::new_with_message(self.handle.clone(), msg)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete link group {group}"),
                e,
            )),
        }
    }

    // ---- addresses ---------------------------------------------------------------------

    /// The IPv4 addresses of a link.
    pub async fn addrs(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink(format!("list addresses of link #{index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, m.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Every IPv4 address of the namespace by link, in one dump (a host reading thousands of
    /// tunnels asks once, not once per link: without strict checking the kernel walks every
    /// device's addresses for each per-link dump).
    pub async fn all_addrs(&self) -> Result<std::collections::HashMap<u32, Vec<Ipv4Net>>> {
        let mut by_link: std::collections::HashMap<u32, Vec<Ipv4Net>> = Default::default();
        let mut msgs = self.handle.address().get().execute();
        while let Some(m) = msgs
            .try_next()
            .await
            .map_err(|e| DataplaneError::netlink("list addresses", e))?
        {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                    Ipv4Net::new(*ip, m.header.prefix_len).ok()
                }
                _ => None,
            });
            if let Some(a) = local {
                by_link.entry(m.header.index).or_default().push(a);
            }
        }
        Ok(by_link)
    }

    /// Make the addresses of a link whose current addresses are known (`have`, from
    /// [`Netlink::all_addrs`]) exactly `want`, without reading them again. Returns whether
    /// anything changed.
    pub async fn sync_known_addrs(
        &self,
        index: u32,
        have: &[Ipv4Net],
        want: &[Ipv4Net],
    ) -> Result<bool> {
        let mut changed = false;
        for stale in have.iter().filter(|a| !want.contains(a)) {
            self.del_addr(index, *stale).await?;
            changed = true;
        }
        for missing in want.iter().filter(|a| !have.contains(a)) {
            self.add_addr(index, *missing).await?;
            changed = true;
        }
        Ok(changed)
    }

    /// Add `addr` to a link unless it is there already, in one request (no dump); returns
    /// whether it was added. Other addresses of the link are left alone.
    pub async fn ensure_addr(&self, index: u32, addr: Ipv4Net) -> Result<bool> {
        match self
            .handle
            .address()
            .add(index, addr.addr().into(), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(
                format!("add address {addr} to link #{index}"),
                e,
            )),
        }
    }

    /// Make the link's IPv4 addresses exactly `want`: add what is missing, remove the rest.
    /// Returns whether anything changed.
    pub async fn sync_addrs(&self, index: u32, want: &[Ipv4Net]) -> Result<bool> {
        let have = self.addrs(index).await?;
        self.sync_known_addrs(index, &have, want).await
    }

    pub async fn add_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        self.ensure_addr(index, addr).await.map(|_| ())
    }

    pub async fn del_addr(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        msg.header.prefix_len = addr.prefix_len();
        msg.attributes
            .push(AddressAttribute::Local(addr.addr().into()));
        msg.attributes
            .push(AddressAttribute::Address(addr.addr().into()));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete address {addr} from link #{index}"),
                e,
            )),
        }
    }

    // ---- forwarding database (VXLAN) ---------------------------------------------------

    /// `bridge fdb replace MAC dev <vxlan> dst IP`: frames for `mac` go to the VTEP `dst`.
    pub async fn fdb_replace(&self, vxlan: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(vxlan, &mac)
            .flags(rtnetlink::packet_route::neighbour::NeighbourFlags::Own)
            .destination(dst.into())
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("fdb entry on link #{vxlan}"), e))
    }

    /// Static FDB entries of a VXLAN link: (MAC, destination).
    pub async fn fdb_entries(&self, vxlan: u32) -> Result<Vec<([u8; 6], Ipv4Addr)>> {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        let msgs = self.bridge_family_entries("list fdb entries").await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == vxlan)
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(v) if v.len() == 6 => {
                            let mut x = [0u8; 6];
                            x.copy_from_slice(v);
                            mac = Some(x);
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            dst = Some(*ip)
                        }
                        // In the bridge family the kernel's address comes back untyped.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(v))
                            if v.len() == 4 =>
                        {
                            dst = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]))
                        }
                        _ => {}
                    }
                }
                Some((mac?, dst?))
            })
            .collect())
    }

    /// Delete a static FDB entry.
    pub async fn fdb_del(&self, vxlan: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = vxlan;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete fdb entry on link #{vxlan}"),
                e,
            )),
        }
    }

    // ---- policy routing ----------------------------------------------------------------

    /// IPv4 rules that look up `table`.
    pub async fn rules_for_table(&self, table: u32) -> Result<Vec<RoutingRule>> {
        Ok(self
            .rules()
            .await?
            .into_iter()
            .filter(|r| r.table == table)
            .collect())
    }

    /// Every IPv4 policy routing rule.
    pub async fn rules(&self) -> Result<Vec<RoutingRule>> {
        use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};
        let msgs: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink("list rules", e))?;
        Ok(msgs
            .iter()
            .map(|m| {
                let mut t = u32::from(m.header.table);
                let mut prio = 0;
                let mut src = None;
                for a in &m.attributes {
                    match a {
                        RuleAttribute::Table(x) => t = *x,
                        RuleAttribute::Priority(p) => prio = *p,
                        RuleAttribute::Source(std::net::IpAddr::V4(ip)) => {
                            src = Ipv4Net::new(*ip, m.header.src_len).ok();
                        }
                        _ => {}
                    }
                }
                RoutingRule {
                    source: src,
                    table: t,
                    priority: prio,
                }
            })
            .collect())
    }

    pub async fn add_rule(&self, rule: &RoutingRule) -> Result<()> {
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(rule.table)
            .priority(rule.priority)
            .action(rtnetlink::packet_route::rule::RuleAction::ToTable);
        if let Some(src) = rule.source {
            req = req.source_prefix(src.network(), src.prefix_len());
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("add rule to table {}", rule.table),
                e,
            )),
        }
    }

    pub async fn del_rule(&self, rule: &RoutingRule) -> Result<()> {
        use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.table = 0;
        msg.attributes.push(RuleAttribute::Table(rule.table));
        msg.attributes.push(RuleAttribute::Priority(rule.priority));
        if let Some(src) = rule.source {
            msg.header.src_len = src.prefix_len();
            msg.attributes
                .push(RuleAttribute::Source(src.network().into()));
        }
        match self.handle.rule().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete rule to table {}", rule.table),
                e,
            )),
        }
    }

    /// Add (or replace) a Weir route in routing table `table`; no gateway: on-link.
    pub async fn replace_route_in_table(
        &self,
        table: u32,
        destination: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: u32,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .output_interface(oif)
            .table_id(table)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        b = match gateway {
            Some(gw) => b.gateway(gw),
            None => b.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(|e| {
                DataplaneError::netlink(format!("add route {destination} to table {table}"), e)
            })
    }

    /// Routes of routing table `table`.
    pub async fn routes_in_table(&self, table: u32) -> Result<Vec<Route>> {
        let mut req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        req.header.table = 0;
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink("list routes", e))?;
        Ok(msgs
            .iter()
            .filter_map(parse_route)
            .filter(|r| r.table == table)
            .collect())
    }

    // ---- routes ------------------------------------------------------------------------

    /// IPv4 unicast routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        self.routes_in_table(MAIN_TABLE).await
    }

    /// Add (or replace) a route in the main table, tagged with [`ROUTE_PROTOCOL`].
    pub async fn replace_route(
        &self,
        destination: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> Result<()> {
        self.replace_route_as(destination, gateway, oif, ROUTE_PROTOCOL)
            .await
    }

    /// Add (or replace) a route tagged with another protocol number (`4` = static): routes
    /// Weir does not own and never removes as stale.
    pub async fn replace_route_as(
        &self,
        destination: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        oif: Option<u32>,
        protocol: u8,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .protocol(RouteProtocol::from(protocol));
        if let Some(gw) = gateway {
            b = b.gateway(gw);
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(oif) = oif {
            b = b.output_interface(oif);
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("add route {destination}"), e))
    }

    /// Add a route only if none exists for `destination` (`NLM_F_EXCL`): `Ok(false)` when one
    /// does, nothing changed. The kernel decides, so a route added meanwhile by someone else
    /// is never replaced.
    pub async fn add_route_exclusive(
        &self,
        destination: Ipv4Net,
        gateway: Ipv4Addr,
        oif: u32,
    ) -> Result<bool> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .gateway(gateway)
            .output_interface(oif)
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(
                format!("add route {destination}"),
                e,
            )),
        }
    }

    /// Delete a route. A route that is already gone is not an error.
    pub async fn del_route(&self, route: &Route) -> Result<()> {
        // Scope "nowhere" matches any scope (as `ip route del` sends): the builder's default,
        // universe, would miss every on-link route (scope link) and answer ESRCH.
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix_len())
            .protocol(RouteProtocol::Other(route.protocol))
            .scope(RouteScope::NoWhere);
        if let Some(gw) = route.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = route.oif {
            b = b.output_interface(oif);
        }
        if route.table != MAIN_TABLE {
            b = b.table_id(route.table);
        }
        match self.handle.route().del(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete route {}", route.destination),
                e,
            )),
        }
    }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        alias: None,
        mac: None,
        vxlan: None,
        peer_index: None,
        peer_netnsid: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a.clone()),
            LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
            LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Link(i) if *i != 0 => link.peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn parse_vxlan(infos: &[InfoVxlan]) -> Vxlan {
    let mut v = Vxlan {
        vni: 0,
        remote: None,
        local: None,
        port: 0,
        learning: true,
    };
    for info in infos {
        match info {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Group(ip) => v.remote = Some(*ip),
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Learning(l) => v.learning = *l,
            _ => {}
        }
    }
    v
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    Some(Route {
        destination: Ipv4Net::new(destination, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        protocol: u8::from(msg.header.protocol),
        table,
    })
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.is_some_and(|c| c.get() == -errno))
}
