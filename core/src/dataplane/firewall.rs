//! Workload firewalls, compiled into one nftables table per runner with a constant number of
//! rules: the 10,000th workload adds set and map elements, never a rule.
//!
//! ```text
//! table inet weir_fw
//!   set m<N>    { ipv4_addr }             local workloads in policy group N
//!   set s<M>    { ipv4_addr }             addresses of every workload (cluster-wide) whose
//!                                         labels match selector M
//!   set host_addrs, set overlay           the host's addresses; the overlay CIDRs ("wan" = not)
//!   chain forward (hook forward)          ct established,related accept;
//!                                         per group: ip saddr @m<N> jump g<N>_out,
//!                                                    ip daddr @m<N> jump g<N>_in
//!   chain g<N>_out / g<N>_in              group N's rules: allow = return, deny = drop
//! ```
//!
//! A *group* is a distinct rule set (all workloads of a tenant share one), so rules grow with
//! distinct policies, not with workloads. Membership is a plain set per group rather than one
//! verdict map (address -> jump chain): the kernel re-validates every jump element of a verdict
//! map on each transaction that adds one, so a map of 10,000 workloads made every attach pay
//! for all of them (~0.9 ms at 20,000 elements here), while a set element costs the same at any
//! size. The price is one set lookup per group for the first packet of a connection. Enforcement sits on the runner that hosts the
//! workload, for both directions, on the forward hook: routed traffic passes it naturally, and
//! bridged traffic (same runner; arriving from the host over `vxlan0`) passes it because the
//! runner turns on `net.bridge.bridge-nf-call-iptables` while the table exists — this kernel
//! has no connection tracking in the bridge family, and replies need it.
//!
//! Whole-table changes (a new group or selector) replace the table atomically through `nft`;
//! everything else is an element batch over netlink ([`super::nfnl`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::nfnl::{self, Elem};
use super::{DataplaneError, Result};
use crate::decision::{Direction, FirewallDecision, Labels, Peer, Protocol, Verdict};

pub const FIREWALL_TABLE: &str = "weir_fw";

/// Addresses the rules refer to besides workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The host's overlay address and its address on this runner's subnet.
    pub host_addrs: Vec<Ipv4Addr>,
    /// Every overlay CIDR ("wan" is anything outside them).
    pub overlays: Vec<Ipv4Net>,
}

#[derive(Debug, Clone)]
struct Group {
    id: u32,
    decision: FirewallDecision,
    monitor: bool,
}

/// The runner's firewall state and what the kernel has of it.
#[derive(Debug, Default)]
pub struct Firewall {
    ctx: Context,
    /// Canonical rule set (+ mode) -> group.
    groups: BTreeMap<String, Group>,
    selectors: BTreeMap<Labels, u32>,
    /// Every workload of the network: address -> labels.
    peers: BTreeMap<Ipv4Addr, Labels>,
    /// Local workloads with a policy: address -> group id.
    local: BTreeMap<Ipv4Addr, u32>,
    next_id: u32,
    /// Element operations not yet applied.
    pending: Vec<Elem>,
    /// The table's structure must be rewritten (new group, selector or context).
    dirty: bool,
    installed: bool,
    /// Structure (groups and selectors) the installed table has.
    installed_groups: BTreeSet<u32>,
    installed_selectors: BTreeSet<u32>,
}

impl Firewall {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_context(&mut self, ctx: Context) {
        if ctx != self.ctx {
            self.ctx = ctx;
            self.dirty = true;
        }
    }

    /// A local workload's policy (attach or repair). `None`: no policy, the open overlay.
    pub fn set_workload(&mut self, ip: Ipv4Addr, policy: Option<(FirewallDecision, bool)>) {
        let Some((decision, monitor)) = policy else {
            self.remove_workload(ip);
            return;
        };
        let gid = self.group(decision, monitor);
        if self.local.get(&ip) == Some(&gid) {
            return;
        }
        if let Some(old) = self.local.insert(ip, gid) {
            // Moving to another group: leave the old one's member set.
            self.leave_group(ip, old);
        }
        if !self.installed_groups.contains(&gid) {
            self.dirty = true;
            return;
        }
        self.pending.push(Elem::Add {
            set: format!("m{gid}"),
            key: ip,
        });
    }

    pub fn remove_workload(&mut self, ip: Ipv4Addr) {
        if let Some(gid) = self.local.remove(&ip) {
            self.leave_group(ip, gid);
        }
    }

    /// Take `ip` out of group `gid`'s member set, if the kernel has that set.
    fn leave_group(&mut self, ip: Ipv4Addr, gid: u32) {
        if self.installed && self.installed_groups.contains(&gid) {
            self.pending.push(Elem::Del {
                set: format!("m{gid}"),
                key: ip,
            });
        }
    }

    /// Replace the peer directory.
    pub fn set_peers(&mut self, peers: BTreeMap<Ipv4Addr, Labels>) {
        if peers != self.peers {
            self.peers = peers;
            self.dirty = true;
        }
    }

    /// A workload appeared (or changed labels) anywhere on the network.
    pub fn upsert_peer(&mut self, ip: Ipv4Addr, labels: Labels) {
        let old = self.peers.insert(ip, labels.clone());
        if old.as_ref() == Some(&labels) {
            return;
        }
        for (sel, id) in &self.selectors {
            if !self.installed_selectors.contains(id) {
                continue;
            }
            let was = old.as_ref().is_some_and(|o| matches(o, sel));
            let is = matches(&labels, sel);
            if is && !was {
                self.pending.push(Elem::Add {
                    set: format!("s{id}"),
                    key: ip,
                });
            } else if was && !is {
                self.pending.push(Elem::Del {
                    set: format!("s{id}"),
                    key: ip,
                });
            }
        }
    }

    pub fn remove_peer(&mut self, ip: Ipv4Addr) {
        let Some(old) = self.peers.remove(&ip) else {
            return;
        };
        for (sel, id) in &self.selectors {
            if self.installed_selectors.contains(id) && matches(&old, sel) {
                self.pending.push(Elem::Del {
                    set: format!("s{id}"),
                    key: ip,
                });
            }
        }
    }

    fn group(&mut self, decision: FirewallDecision, monitor: bool) -> u32 {
        let key = format!(
            "{monitor}:{}",
            serde_json::to_string(&decision).unwrap_or_default()
        );
        if let Some(g) = self.groups.get(&key) {
            return g.id;
        }
        self.next_id += 1;
        let id = self.next_id;
        for rule in &decision.rules {
            if let Peer::Labels(l) = &rule.peer
                && !self.selectors.contains_key(l)
            {
                self.next_id += 1;
                self.selectors.insert(l.clone(), self.next_id);
            }
        }
        self.groups.insert(
            key,
            Group {
                id,
                decision,
                monitor,
            },
        );
        id
    }

    /// Whether the table is wanted in the kernel (some local workload has a policy).
    pub fn needs_table(&self) -> bool {
        !self.local.is_empty()
    }

    /// The number of rules the table holds (it does not grow with workloads).
    pub fn rule_count(&self) -> usize {
        let per_group = |g: &Group| {
            g.decision.rules.len()
                + if g.decision.default_verdict == Verdict::Deny {
                    2
                } else {
                    0
                }
        };
        // `ct state … accept`, then two jumps and the group's own rules per group.
        1 + self
            .groups
            .values()
            .map(|g| 2 + per_group(g))
            .sum::<usize>()
    }

    /// Apply what changed: an element batch, or the whole table when its structure changed.
    pub async fn commit(&mut self) -> Result<()> {
        if self.local.is_empty() {
            self.pending.clear();
            if self.installed {
                super::nft::delete(FIREWALL_TABLE).await?;
                self.installed = false;
                self.installed_groups.clear();
                self.installed_selectors.clear();
            }
            self.dirty = false;
            return Ok(());
        }
        if self.dirty || !self.installed {
            // Only the groups in use (and their selectors) are written.
            let used: BTreeSet<u32> = self.local.values().copied().collect();
            self.groups.retain(|_, g| used.contains(&g.id));
            let wanted: BTreeSet<Labels> = self
                .groups
                .values()
                .flat_map(|g| g.decision.rules.iter())
                .filter_map(|r| match &r.peer {
                    Peer::Labels(l) => Some(l.clone()),
                    _ => None,
                })
                .collect();
            self.selectors.retain(|l, _| wanted.contains(l));
            let script = self.script();
            super::nft::apply_script(&script).await?;
            super::sysctl::enable_bridge_netfilter()?;
            self.installed = true;
            self.installed_groups = self.groups.values().map(|g| g.id).collect();
            self.installed_selectors = self.selectors.values().copied().collect();
            self.pending.clear();
            self.dirty = false;
            return Ok(());
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.pending);
        tokio::task::spawn_blocking(move || nfnl::apply(FIREWALL_TABLE, &ops))
            .await
            .map_err(|e| DataplaneError::Nft(format!("element batch: {e}")))?
            .map_err(|e| DataplaneError::Nft(e.to_string()))
    }

    /// The whole table, as an `nft -f` script that replaces it atomically.
    pub fn script(&self) -> String {
        let t = FIREWALL_TABLE;
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        s.push_str("  counter dropped {\n  }\n  counter would_drop {\n  }\n");
        set(
            &mut s,
            "host_addrs",
            false,
            self.ctx.host_addrs.iter().map(|a| a.to_string()),
        );
        set(
            &mut s,
            "overlay",
            true,
            self.ctx.overlays.iter().map(|n| n.to_string()),
        );
        for (labels, id) in &self.selectors {
            let members = self
                .peers
                .iter()
                .filter(|(_, l)| matches(l, labels))
                .map(|(a, _)| a.to_string());
            set(&mut s, &format!("s{id}"), false, members);
        }
        for g in self.groups.values() {
            let members = self
                .local
                .iter()
                .filter(|(_, gid)| **gid == g.id)
                .map(|(a, _)| a.to_string());
            set(&mut s, &format!("m{}", g.id), false, members);
        }
        // Before Weir's (and others') forward accept rules: a drop here wins. A workload is in
        // one group, so at most one jump per direction applies to a packet.
        s.push_str(
            "  chain forward {\n    type filter hook forward priority filter - 10; policy accept;\n    ct state established,related accept\n",
        );
        for (addr, dir) in [("saddr", "out"), ("daddr", "in")] {
            for g in self.groups.values() {
                let _ = writeln!(s, "    ip {addr} @m{id} jump g{id}_{dir}", id = g.id);
            }
        }
        s.push_str("  }\n");
        for g in self.groups.values() {
            for (dir, suffix) in [(Direction::Egress, "out"), (Direction::Ingress, "in")] {
                let _ = writeln!(s, "  chain g{}_{suffix} {{", g.id);
                for rule in g.decision.rules.iter().filter(|r| r.direction == dir) {
                    if let Some(line) = self.rule_line(rule, dir, g.monitor) {
                        let _ = writeln!(s, "    {line}");
                    }
                }
                if g.decision.default_verdict == Verdict::Deny {
                    let _ = writeln!(s, "    {}", deny(g.monitor));
                }
                s.push_str("  }\n");
            }
        }
        s.push_str("}\n");
        s
    }

    fn rule_line(
        &self,
        rule: &crate::decision::Rule,
        dir: Direction,
        monitor: bool,
    ) -> Option<String> {
        let addr = match dir {
            Direction::Egress => "ip daddr",
            Direction::Ingress => "ip saddr",
        };
        let mut m = Vec::new();
        match &rule.peer {
            Peer::Labels(l) => m.push(format!("{addr} @s{}", self.selectors.get(l)?)),
            Peer::Cidr(c) => m.push(format!("{addr} {c}")),
            Peer::Host => m.push(format!("{addr} @host_addrs")),
            Peer::Wan => m.push(format!("{addr} != @overlay")),
            Peer::Any => {}
        }
        match rule.protocol {
            Protocol::Any => {}
            Protocol::Tcp => m.push("meta l4proto tcp".into()),
            Protocol::Udp => m.push("meta l4proto udp".into()),
            Protocol::Icmp => m.push("meta l4proto icmp".into()),
        }
        if !rule.ports.is_empty() {
            let proto = if rule.protocol == Protocol::Udp {
                "udp"
            } else {
                "tcp"
            };
            let ports: Vec<String> = rule
                .ports
                .iter()
                .map(|p| {
                    if p.first == p.last {
                        p.first.to_string()
                    } else {
                        format!("{}-{}", p.first, p.last)
                    }
                })
                .collect();
            m.push(format!("{proto} dport {{ {} }}", ports.join(", ")));
        }
        m.push(match rule.verdict {
            Verdict::Allow => "return".into(),
            Verdict::Deny => deny(monitor).into(),
        });
        Some(m.join(" "))
    }
}

fn deny(monitor: bool) -> &'static str {
    if monitor {
        // Monitor mode: count what would have been dropped, and let it through.
        "counter name would_drop return"
    } else {
        "counter name dropped drop"
    }
}

fn set(s: &mut String, name: &str, interval: bool, members: impl Iterator<Item = String>) {
    let members: Vec<String> = members.collect();
    let _ = writeln!(s, "  set {name} {{\n    type ipv4_addr");
    if interval {
        s.push_str("    flags interval\n");
    }
    if !members.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", members.join(", "));
    }
    s.push_str("  }\n");
}

/// A workload matches a selector when it carries every one of the selector's labels.
fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{PortRange, Rule};

    fn tenant(t: &str) -> FirewallDecision {
        let l: Labels = [("tenant".to_string(), t.to_string())].into();
        let rule = |direction, peer| Rule {
            direction,
            peer,
            protocol: Protocol::Any,
            ports: vec![],
            verdict: Verdict::Allow,
        };
        FirewallDecision {
            rules: vec![
                rule(Direction::Ingress, Peer::Labels(l.clone())),
                rule(Direction::Ingress, Peer::Host),
                rule(Direction::Egress, Peer::Labels(l)),
                rule(Direction::Egress, Peer::Host),
                Rule {
                    direction: Direction::Egress,
                    peer: Peer::Wan,
                    protocol: Protocol::Tcp,
                    ports: vec![
                        PortRange {
                            first: 80,
                            last: 80,
                        },
                        PortRange {
                            first: 8000,
                            last: 8100,
                        },
                    ],
                    verdict: Verdict::Allow,
                },
            ],
            default_verdict: Verdict::Deny,
        }
    }

    #[test]
    fn rules_do_not_grow_with_workloads() {
        let mut fw = Firewall::new();
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 2), Some((tenant("a"), false)));
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 3), Some((tenant("b"), false)));
        let small = fw.rule_count();
        for i in 4..250 {
            let t = if i % 2 == 0 { "a" } else { "b" };
            fw.set_workload(Ipv4Addr::new(10, 0, 1, i), Some((tenant(t), false)));
            fw.upsert_peer(
                Ipv4Addr::new(10, 0, 1, i),
                [("tenant".to_string(), t.to_string())].into(),
            );
        }
        assert_eq!(fw.rule_count(), small, "{}", fw.script());
        assert_eq!(fw.groups.len(), 2);
        assert_eq!(fw.selectors.len(), 2);
    }

    #[test]
    fn the_script_says_what_the_rules_say() {
        let mut fw = Firewall::new();
        fw.set_context(Context {
            host_addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
            overlays: vec!["10.0.0.0/22".parse().unwrap()],
        });
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 2), Some((tenant("a"), false)));
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 9), Some((tenant("a"), true)));
        fw.set_peers(
            [(
                Ipv4Addr::new(10, 0, 2, 7),
                [("tenant".to_string(), "a".to_string())].into(),
            )]
            .into(),
        );
        let s = fw.script();
        assert!(s.contains("ip saddr @m1 jump g1_out"), "{s}");
        assert!(s.contains("ip daddr @m1 jump g1_in"), "{s}");
        assert!(
            s.contains("set m1 {\n    type ipv4_addr\n    elements = { 10.0.1.2 }"),
            "{s}"
        );
        assert!(s.contains("ip daddr @s2 return"), "{s}");
        assert!(s.contains("ip saddr @host_addrs return"), "{s}");
        assert!(
            s.contains("ip daddr != @overlay meta l4proto tcp tcp dport { 80, 8000-8100 } return"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.0.2.7 }"), "{s}");
        assert!(
            s.contains("counter name dropped drop"),
            "enforcing group drops: {s}"
        );
        assert!(
            s.contains("counter name would_drop return"),
            "monitor group counts: {s}"
        );
    }

    #[test]
    fn element_changes_are_incremental_once_installed() {
        let mut fw = Firewall::new();
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 2), Some((tenant("a"), false)));
        // Pretend the table is in the kernel.
        fw.installed = true;
        fw.dirty = false;
        fw.installed_groups = fw.groups.values().map(|g| g.id).collect();
        fw.installed_selectors = fw.selectors.values().copied().collect();
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 3), Some((tenant("a"), false)));
        fw.upsert_peer(
            Ipv4Addr::new(10, 0, 1, 3),
            [("tenant".to_string(), "a".to_string())].into(),
        );
        fw.upsert_peer(
            Ipv4Addr::new(10, 0, 1, 4),
            [("tenant".to_string(), "z".to_string())].into(),
        );
        assert!(!fw.dirty);
        assert_eq!(
            fw.pending,
            vec![
                Elem::Add {
                    set: "m1".into(),
                    key: Ipv4Addr::new(10, 0, 1, 3)
                },
                Elem::Add {
                    set: "s2".into(),
                    key: Ipv4Addr::new(10, 0, 1, 3)
                },
            ],
            "one group member and one selector member"
        );
        fw.set_workload(Ipv4Addr::new(10, 0, 1, 5), Some((tenant("new"), false)));
        assert!(fw.dirty, "a new group rewrites the table");
    }
}
