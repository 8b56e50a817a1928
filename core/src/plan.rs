//! The address plan: `BASE/PREFIX/NODE_BITS/SUBNET_BITS`, or the flat `BASE/PREFIX`.
//!
//! A hierarchical plan splits an IPv4 overlay CIDR into one block per runner. Block 0 belongs to the host
//! (it carries the host overlay IP `B+1`); runner `r` (1 ..= 2^NODE_BITS − 1) owns
//! `B + (r << SUBNET_BITS)` with prefix `32 − SUBNET_BITS`. Inside a runner block `.1` is the
//! gateway (the runner's bridge), `.254` is the host's address on that subnet, and workloads get
//! `subnet+2 ..= subnet+2^S−3` minus `.254`.
//!
//! A flat plan (KohakuRiver's two-part form) gives every runner the whole `BASE/PREFIX`: each
//! runner's bridge is `B+1` (the workloads' gateway), the host is `broadcast − 1` on every one
//! of its tunnels, and workloads get `B+2 ..= broadcast − 2`, each address unique across the
//! network (the host allocates from one pool; it routes each workload's address to its
//! runner's tunnel). Runner ids run from 1 to [`FLAT_MAX_RUNNERS`], as in KohakuRiver.
//!
//! Everything here is pure arithmetic: no I/O, no kernel.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The offset of the host's address inside every runner subnet.
pub const HOST_ON_SUBNET_OFFSET: u32 = 254;
/// The largest runner id of a flat plan (KohakuRiver's limit for its flat networks).
pub const FLAT_MAX_RUNNERS: u32 = 63;
/// Interface names are limited to 15 bytes by the kernel (IFNAMSIZ − 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Why a plan specification was refused. Each variant names the part at fault and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "plan {spec:?}: expected 4 parts BASE/PREFIX/NODE_BITS/SUBNET_BITS, or 2 for a flat plan BASE/PREFIX; found {found}"
    )]
    PartCount { spec: String, found: usize },
    #[error("plan {spec:?}: BASE {value:?} is not an IPv4 address")]
    Base { spec: String, value: String },
    #[error("plan {spec:?}: {part} {value:?} is not an integer (allowed: {allowed})")]
    NotInteger {
        spec: String,
        part: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("plan {spec:?}: {part} = {value} is out of range (allowed: {allowed})")]
    OutOfRange {
        spec: String,
        part: &'static str,
        value: u64,
        allowed: &'static str,
    },
    #[error(
        "plan {spec:?}: PREFIX + NODE_BITS + SUBNET_BITS = {prefix} + {node} + {subnet} = {sum}, must be 32"
    )]
    Sum {
        spec: String,
        prefix: u64,
        node: u64,
        subnet: u64,
        sum: u64,
    },
    #[error("runner id {id} is out of range for plan {spec} (allowed: 1..={max})")]
    RunnerId { spec: String, id: u64, max: u32 },
    #[error(
        "vxlan id base {base} is out of range for plan {spec}: runner {max} would get VNI {last}, above the VXLAN limit {MAX_VNI} (allowed: 0..={allowed})"
    )]
    VniBase {
        spec: String,
        base: u32,
        max: u32,
        last: u64,
        allowed: u32,
    },
}

/// A validated address plan. Construct with [`Plan::from_str`] / [`Plan::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Plan {
    overlay: Ipv4Net,
    /// 0 for a flat plan (every runner shares the overlay).
    node_bits: u8,
    subnet_bits: u8,
}

impl Plan {
    /// Build a plan from its numeric parts, applying the same rules as the textual form.
    pub fn new(
        base: Ipv4Addr,
        prefix: u8,
        node_bits: u8,
        subnet_bits: u8,
    ) -> Result<Self, PlanError> {
        format!("{base}/{prefix}/{node_bits}/{subnet_bits}").parse()
    }

    /// A flat plan `BASE/PREFIX`: one subnet shared by every runner.
    pub fn flat(base: Ipv4Addr, prefix: u8) -> Result<Self, PlanError> {
        format!("{base}/{prefix}").parse()
    }

    /// Whether every runner shares the whole overlay (the two-part form).
    pub fn is_flat(&self) -> bool {
        self.node_bits == 0
    }

    /// The overlay CIDR `B/PREFIX` (host bits of BASE cleared).
    pub fn overlay(&self) -> Ipv4Net {
        self.overlay
    }
    pub fn prefix(&self) -> u8 {
        self.overlay.prefix_len()
    }
    pub fn node_bits(&self) -> u8 {
        self.node_bits
    }
    pub fn subnet_bits(&self) -> u8 {
        self.subnet_bits
    }
    /// The host's overlay address, with the overlay prefix: `B+1` (on the host's own device),
    /// or in a flat plan `broadcast − 1` (on each of its tunnels; `B+1` is the runners').
    pub fn host_ip(&self) -> Ipv4Net {
        if self.is_flat() {
            net(flat_host(self.overlay), self.prefix())
        } else {
            net(offset(self.overlay.network(), 1), self.prefix())
        }
    }
    /// The largest runner id (`2^NODE_BITS − 1`, or [`FLAT_MAX_RUNNERS`]); ids run from 1 to
    /// this.
    pub fn max_runners(&self) -> u32 {
        if self.is_flat() {
            FLAT_MAX_RUNNERS
        } else {
            (1u32 << self.node_bits) - 1
        }
    }
    /// The prefix length of every runner subnet (`32 − SUBNET_BITS`).
    pub fn runner_prefix(&self) -> u8 {
        32 - self.subnet_bits
    }
    /// How many addresses a workload can really get on one runner: `first..=last` without `.254`.
    /// In a flat plan, how many the whole network holds (its runners share them).
    pub fn assignable_per_runner(&self) -> u32 {
        if self.is_flat() {
            // B+2 ..= broadcast − 2: the host's `broadcast − 1` lies outside.
            return (1u32 << self.subnet_bits) - 4;
        }
        let in_range = (1u32 << self.subnet_bits) - 4;
        // `.254` lies inside first..=last whenever the block is larger than a /24.
        if self.subnet_bits > 8 {
            in_range - 1
        } else {
            in_range
        }
    }

    /// Check a runner id against the plan.
    pub fn check_runner(&self, id: u64) -> Result<u32, PlanError> {
        if id >= 1 && id <= u64::from(self.max_runners()) {
            Ok(id as u32)
        } else {
            Err(PlanError::RunnerId {
                spec: self.to_string(),
                id,
                max: self.max_runners(),
            })
        }
    }

    /// Check that every runner's VNI (`base + id`) fits in 24 bits.
    pub fn check_vni_base(&self, base: u32) -> Result<(), PlanError> {
        let last = u64::from(base) + u64::from(self.max_runners());
        if last <= u64::from(MAX_VNI) {
            Ok(())
        } else {
            Err(PlanError::VniBase {
                spec: self.to_string(),
                base,
                max: self.max_runners(),
                last,
                allowed: MAX_VNI - self.max_runners(),
            })
        }
    }

    /// The block of runner `id`. Fails for ids outside `1..=max_runners`.
    pub fn runner(&self, id: u32) -> Result<RunnerBlock, PlanError> {
        let id = self.check_runner(u64::from(id))?;
        if self.is_flat() {
            return Ok(RunnerBlock {
                id,
                subnet: self.overlay,
                flat: true,
            });
        }
        let start = u32::from(self.overlay.network()) + (id << self.subnet_bits);
        let subnet = net(Ipv4Addr::from(start), self.runner_prefix());
        Ok(RunnerBlock {
            id,
            subnet,
            flat: false,
        })
    }

    /// The runner id whose block holds `addr`, if any (never, in a flat plan: any runner's
    /// workload may hold any address).
    pub fn runner_of(&self, addr: Ipv4Addr) -> Option<u32> {
        if self.is_flat() || !self.overlay.contains(&addr) {
            return None;
        }
        let rel = u32::from(addr) - u32::from(self.overlay.network());
        let id = rel >> self.subnet_bits;
        (id >= 1).then_some(id)
    }
}

impl FromStr for Plan {
    type Err = PlanError;

    fn from_str(spec: &str) -> Result<Self, PlanError> {
        let parts: Vec<&str> = spec.trim().split('/').collect();
        if parts.len() == 2 {
            return parse_flat(spec, &parts);
        }
        if parts.len() != 4 {
            return Err(PlanError::PartCount {
                spec: spec.to_string(),
                found: parts.len(),
            });
        }
        let base: Ipv4Addr = parts[0].parse().map_err(|_| PlanError::Base {
            spec: spec.to_string(),
            value: parts[0].to_string(),
        })?;
        let number = |idx: usize, part: &'static str, allowed: &'static str| {
            parts[idx]
                .parse::<u64>()
                .map_err(|_| PlanError::NotInteger {
                    spec: spec.to_string(),
                    part,
                    value: parts[idx].to_string(),
                    allowed,
                })
        };
        const PREFIX_ALLOWED: &str = "1..=23";
        const NODE_ALLOWED: &str = "1..=16";
        const SUBNET_ALLOWED: &str = "8..=30";
        let prefix = number(1, "PREFIX", PREFIX_ALLOWED)?;
        let node = number(2, "NODE_BITS", NODE_ALLOWED)?;
        let subnet = number(3, "SUBNET_BITS", SUBNET_ALLOWED)?;
        let range = |part: &'static str, value: u64, ok: bool, allowed: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(PlanError::OutOfRange {
                    spec: spec.to_string(),
                    part,
                    value,
                    allowed,
                })
            }
        };
        range("PREFIX", prefix, (1..=23).contains(&prefix), PREFIX_ALLOWED)?;
        range("NODE_BITS", node, (1..=16).contains(&node), NODE_ALLOWED)?;
        range(
            "SUBNET_BITS",
            subnet,
            (8..=30).contains(&subnet),
            SUBNET_ALLOWED,
        )?;
        let sum = prefix + node + subnet;
        if sum != 32 {
            return Err(PlanError::Sum {
                spec: spec.to_string(),
                prefix,
                node,
                subnet,
                sum,
            });
        }
        Ok(Plan {
            overlay: net(base, prefix as u8).trunc(),
            node_bits: node as u8,
            subnet_bits: subnet as u8,
        })
    }
}

/// `BASE/PREFIX`: PREFIX 8..=29 (a /29 leaves workloads 4 addresses; a /30 none).
fn parse_flat(spec: &str, parts: &[&str]) -> Result<Plan, PlanError> {
    const ALLOWED: &str = "8..=29 for a flat plan";
    let base: Ipv4Addr = parts[0].parse().map_err(|_| PlanError::Base {
        spec: spec.to_string(),
        value: parts[0].to_string(),
    })?;
    let prefix = parts[1].parse::<u64>().map_err(|_| PlanError::NotInteger {
        spec: spec.to_string(),
        part: "PREFIX",
        value: parts[1].to_string(),
        allowed: ALLOWED,
    })?;
    if !(8..=29).contains(&prefix) {
        return Err(PlanError::OutOfRange {
            spec: spec.to_string(),
            part: "PREFIX",
            value: prefix,
            allowed: ALLOWED,
        });
    }
    Ok(Plan {
        overlay: net(base, prefix as u8).trunc(),
        node_bits: 0,
        subnet_bits: 32 - prefix as u8,
    })
}

/// A flat network's host address: `broadcast − 1`.
fn flat_host(overlay: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(overlay.broadcast()) - 1)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_flat() {
            return write!(f, "{}/{}", self.overlay.network(), self.prefix());
        }
        write!(
            f,
            "{}/{}/{}/{}",
            self.overlay.network(),
            self.prefix(),
            self.node_bits,
            self.subnet_bits
        )
    }
}

impl Serialize for Plan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Plan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One runner's block of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerBlock {
    pub id: u32,
    /// The runner subnet, e.g. `10.128.64.0/18` (a flat plan's whole overlay).
    pub subnet: Ipv4Net,
    /// Of a flat plan: the subnet is every runner's.
    pub flat: bool,
}

impl RunnerBlock {
    /// The runner's bridge address (`subnet + 1`).
    pub fn gateway(&self) -> Ipv4Addr {
        offset(self.subnet.network(), 1)
    }
    /// The host's address on this runner's subnet (`subnet + 254`; flat: `broadcast − 1`).
    pub fn host_ip_on_subnet(&self) -> Ipv4Addr {
        if self.flat {
            flat_host(self.subnet)
        } else {
            offset(self.subnet.network(), HOST_ON_SUBNET_OFFSET)
        }
    }
    /// The first address a workload can get.
    pub fn first(&self) -> Ipv4Addr {
        offset(self.subnet.network(), 2)
    }
    /// The last address a workload can get (`broadcast − 2`).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.broadcast()) - 2)
    }
    /// Whether `addr` may be handed to a workload: inside first..=last and not `.254`.
    pub fn is_assignable(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        a >= u32::from(self.first())
            && a <= u32::from(self.last())
            && addr != self.host_ip_on_subnet()
    }
    /// The VNI of this runner's tunnel.
    pub fn vni(&self, vxlan_id_base: u32) -> u32 {
        vxlan_id_base + self.id
    }
}

/// The host-side tunnel name of runner `id`: `prefix` + id in lowercase base 36, no leading zeros.
pub fn tunnel_name(prefix: &str, id: u32) -> String {
    format!("{prefix}{}", base36(id))
}

/// Parse a host-side tunnel name back into a runner id (`None` if it is not `prefix` + base 36).
pub fn parse_tunnel_name(prefix: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty()
        || digits.starts_with('0')
        || !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        return None;
    }
    u32::from_str_radix(digits, 36).ok()
}

/// Lowercase base 36 without leading zeros (0 is "0").
pub fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn offset(addr: Ipv4Addr, by: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) + by)
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    // Callers only pass prefixes already checked to be <= 32.
    Ipv4Net::new(addr, prefix).unwrap_or_else(|_| Ipv4Net::default())
}

/// The machine-readable description of a plan, as printed by `weir plan --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanReport {
    pub spec: String,
    pub overlay_cidr: String,
    pub host_ip: String,
    /// A flat plan: every runner shares the one subnet (and its assignable addresses).
    #[serde(default)]
    pub flat: bool,
    pub max_runners: u32,
    pub runner_prefix: u8,
    pub assignable_per_runner: u32,
    pub runners: Vec<RunnerReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunnerReport {
    pub id: u32,
    pub subnet: String,
    pub gateway: String,
    pub host_ip_on_subnet: String,
    pub first: String,
    pub last: String,
    pub device: String,
    pub vni: u32,
}

impl PlanReport {
    /// Describe `plan` and the given runners (ids are checked against the plan).
    pub fn new(
        plan: &Plan,
        runner_ids: &[u64],
        vxlan_id_base: u32,
        tunnel_prefix: &str,
    ) -> Result<Self, PlanError> {
        plan.check_vni_base(vxlan_id_base)?;
        let runners = runner_ids
            .iter()
            .map(|&id| {
                let block = plan.runner(plan.check_runner(id)?)?;
                Ok(RunnerReport {
                    id: block.id,
                    subnet: block.subnet.to_string(),
                    gateway: block.gateway().to_string(),
                    host_ip_on_subnet: block.host_ip_on_subnet().to_string(),
                    first: block.first().to_string(),
                    last: block.last().to_string(),
                    device: tunnel_name(tunnel_prefix, block.id),
                    vni: block.vni(vxlan_id_base),
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        Ok(PlanReport {
            spec: plan.to_string(),
            overlay_cidr: plan.overlay().to_string(),
            host_ip: plan.host_ip().to_string(),
            flat: plan.is_flat(),
            max_runners: plan.max_runners(),
            runner_prefix: plan.runner_prefix(),
            assignable_per_runner: plan.assignable_per_runner(),
            runners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(s: &str) -> Plan {
        s.parse().unwrap()
    }

    #[test]
    fn a_flat_plan_gives_every_runner_the_whole_network_as_kohakuriver_does() {
        let p = plan("203.0.113.130/26");
        assert!(p.is_flat());
        assert_eq!(p.to_string(), "203.0.113.128/26");
        assert_eq!(p.overlay().to_string(), "203.0.113.128/26");
        assert_eq!(p.host_ip().to_string(), "203.0.113.190/26");
        assert_eq!(p.max_runners(), FLAT_MAX_RUNNERS);
        assert_eq!(p.assignable_per_runner(), 60);
        for id in [1, 2, 63] {
            let b = p.runner(id).unwrap();
            assert_eq!(b.subnet.to_string(), "203.0.113.128/26");
            assert_eq!(b.gateway().to_string(), "203.0.113.129");
            assert_eq!(b.host_ip_on_subnet().to_string(), "203.0.113.190");
            assert_eq!(b.first().to_string(), "203.0.113.130");
            assert_eq!(b.last().to_string(), "203.0.113.189");
            assert_eq!(b.vni(100), 100 + id);
        }
        assert!(p.runner(64).is_err() && p.runner(0).is_err());
        let b = p.runner(1).unwrap();
        assert!(!b.is_assignable("203.0.113.190".parse().unwrap()));
        assert!(!b.is_assignable("203.0.113.129".parse().unwrap()));
        assert!(b.is_assignable("203.0.113.189".parse().unwrap()));
        // No address says which runner holds it.
        assert_eq!(p.runner_of("203.0.113.140".parse().unwrap()), None);
        assert_eq!(p, Plan::flat("203.0.113.128".parse().unwrap(), 26).unwrap());
        // Round trip through the configuration's form.
        assert_eq!(plan(&p.to_string()), p);
    }

    #[test]
    fn a_flat_plan_is_refused_with_the_part_and_what_is_allowed() {
        let e = "10.0.0.0/30".parse::<Plan>().unwrap_err().to_string();
        assert!(
            e.contains("PREFIX = 30") && e.contains("8..=29 for a flat plan"),
            "{e}"
        );
        let e = "10.0.0.0/x".parse::<Plan>().unwrap_err().to_string();
        assert!(e.contains("PREFIX \"x\""), "{e}");
        let e = "10.0.0/24".parse::<Plan>().unwrap_err().to_string();
        assert!(e.contains("BASE \"10.0.0\""), "{e}");
        let e = "10.0.0.0/24/8".parse::<Plan>().unwrap_err().to_string();
        assert!(
            e.contains("or 2 for a flat plan") && e.contains("found 3"),
            "{e}"
        );
    }

    #[test]
    fn default_plan_matches_design() {
        let p = plan("10.128.0.0/12/6/14");
        assert_eq!(p.overlay().to_string(), "10.128.0.0/12");
        assert_eq!(p.host_ip().to_string(), "10.128.0.1/12");
        assert_eq!(p.max_runners(), 63);
        assert_eq!(p.runner_prefix(), 18);
        assert_eq!(p.assignable_per_runner(), 16379);
        let r1 = p.runner(1).unwrap();
        assert_eq!(r1.subnet.to_string(), "10.128.64.0/18");
        assert_eq!(r1.gateway().to_string(), "10.128.64.1");
        assert_eq!(r1.host_ip_on_subnet().to_string(), "10.128.64.254");
        assert_eq!(r1.first().to_string(), "10.128.64.2");
        assert_eq!(r1.last().to_string(), "10.128.127.253");
        assert_eq!(r1.vni(100), 101);
        let r2 = p.runner(2).unwrap();
        assert_eq!(r2.subnet.to_string(), "10.128.128.0/18");
        assert_eq!(r2.host_ip_on_subnet().to_string(), "10.128.128.254");
        let r63 = p.runner(63).unwrap();
        assert_eq!(r63.subnet.to_string(), "10.143.192.0/18");
        assert_eq!(r63.last().to_string(), "10.143.255.253");
    }

    #[test]
    fn host_bits_in_base_are_cleared() {
        let p = plan("10.130.7.9/12/6/14");
        assert_eq!(p.to_string(), "10.128.0.0/12/6/14");
        assert_eq!(p.host_ip().to_string(), "10.128.0.1/12");
        assert_eq!(p.runner(1).unwrap().subnet.to_string(), "10.128.64.0/18");
    }

    #[test]
    fn largest_node_split() {
        // NODE_BITS = 16 is the most runners; SUBNET_BITS = 8 the smallest block.
        let p = plan("10.0.0.0/8/16/8");
        assert_eq!(p.max_runners(), 65535);
        assert_eq!(p.runner_prefix(), 24);
        assert_eq!(p.assignable_per_runner(), 252);
        let r = p.runner(1).unwrap();
        assert_eq!(r.subnet.to_string(), "10.0.1.0/24");
        assert_eq!(r.first().to_string(), "10.0.1.2");
        assert_eq!(r.last().to_string(), "10.0.1.253");
        assert_eq!(r.host_ip_on_subnet().to_string(), "10.0.1.254");
        assert!(!r.is_assignable("10.0.1.254".parse().unwrap()));
        let last = p.runner(65535).unwrap();
        assert_eq!(last.subnet.to_string(), "10.255.255.0/24");
        assert_eq!(tunnel_name("vxkr", 65535), "vxkr1ekf");
    }

    #[test]
    fn smallest_node_split() {
        // NODE_BITS = 1 gives a single runner; PREFIX = 1 with the largest block.
        let p = plan("128.0.0.0/1/1/30");
        assert_eq!(p.max_runners(), 1);
        assert_eq!(p.runner_prefix(), 2);
        let r = p.runner(1).unwrap();
        assert_eq!(r.subnet.to_string(), "192.0.0.0/2");
        assert_eq!(r.gateway().to_string(), "192.0.0.1");
        assert_eq!(r.last().to_string(), "255.255.255.253");
        assert_eq!(p.assignable_per_runner(), (1u32 << 30) - 5);
        assert!(p.runner(2).is_err());
        assert!(p.runner(0).is_err());
    }

    #[test]
    fn small_plan_for_tests() {
        let p = plan("10.0.0.0/22/2/8");
        assert_eq!(p.max_runners(), 3);
        assert_eq!(p.runner(3).unwrap().subnet.to_string(), "10.0.3.0/24");
        assert_eq!(p.runner_of("10.0.3.7".parse().unwrap()), Some(3));
        assert_eq!(p.runner_of("10.0.0.1".parse().unwrap()), None);
        assert_eq!(p.runner_of("10.0.4.1".parse().unwrap()), None);
    }

    #[test]
    fn assignable_excludes_reserved_addresses() {
        let r = plan("10.128.0.0/12/6/14").runner(1).unwrap();
        for bad in [
            "10.128.64.0",
            "10.128.64.1",
            "10.128.64.254",
            "10.128.127.254",
            "10.128.127.255",
            "10.128.128.2",
        ] {
            assert!(!r.is_assignable(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "10.128.64.2",
            "10.128.64.255",
            "10.128.65.0",
            "10.128.127.253",
        ] {
            assert!(r.is_assignable(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn base36_names() {
        for (id, name) in [
            (1, "vxkr1"),
            (9, "vxkr9"),
            (10, "vxkra"),
            (35, "vxkrz"),
            (36, "vxkr10"),
            (63, "vxkr1r"),
        ] {
            assert_eq!(tunnel_name("vxkr", id), name);
            assert_eq!(parse_tunnel_name("vxkr", name), Some(id));
        }
        for bad in ["vxkr", "vxkr01", "vxkrA", "vxkr-1", "vxlan0", "vxkr1 "] {
            assert_eq!(parse_tunnel_name("vxkr", bad), None, "{bad}");
        }
        assert_eq!(parse_tunnel_name("vxkr", "vxkrzz"), Some(36 * 35 + 35));
    }

    #[test]
    fn refusals_name_the_part() {
        let cases = [
            ("10.128.0.0/12/6", "expected 4 parts"),
            ("10.128.0.0/12/6/14/1", "found 5"),
            ("10.128.0/12/6/14", "BASE \"10.128.0\""),
            ("10.128.0.0/x/6/14", "PREFIX \"x\" is not an integer"),
            ("10.128.0.0/12/six/14", "NODE_BITS \"six\""),
            ("10.128.0.0/12/6/-14", "SUBNET_BITS \"-14\""),
            (
                "10.128.0.0/0/16/16",
                "PREFIX = 0 is out of range (allowed: 1..=23)",
            ),
            (
                "10.128.0.0/12/0/20",
                "NODE_BITS = 0 is out of range (allowed: 1..=16)",
            ),
            (
                "10.128.0.0/7/17/8",
                "NODE_BITS = 17 is out of range (allowed: 1..=16)",
            ),
            (
                "10.128.0.0/18/7/7",
                "SUBNET_BITS = 7 is out of range (allowed: 8..=30)",
            ),
            ("10.128.0.0/12/6/15", "= 33, must be 32"),
            ("10.128.0.0/12/6/13", "= 31, must be 32"),
            ("", "expected 4 parts"),
        ];
        for (spec, want) in cases {
            let err = spec.parse::<Plan>().unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn runner_ids_at_both_ends() {
        let p = plan("10.128.0.0/12/6/14");
        assert!(p.runner(1).is_ok());
        assert!(p.runner(63).is_ok());
        let e = p.runner(64).unwrap_err().to_string();
        assert!(e.contains("runner id 64") && e.contains("1..=63"), "{e}");
        let e = p.check_runner(0).unwrap_err().to_string();
        assert!(e.contains("runner id 0"), "{e}");
    }

    #[test]
    fn vni_base_must_fit() {
        let p = plan("10.0.0.0/8/16/8");
        assert!(p.check_vni_base(100).is_ok());
        assert!(p.check_vni_base(MAX_VNI - 65535).is_ok());
        let e = p.check_vni_base(MAX_VNI - 65534).unwrap_err().to_string();
        assert!(
            e.contains("vxlan id base") && e.contains("allowed: 0..="),
            "{e}"
        );
    }

    #[test]
    fn report_matches_documented_json() {
        let p = plan("10.128.0.0/12/6/14");
        let r = PlanReport::new(&p, &[1], 100, "vxkr").unwrap();
        let json = serde_json::to_value(&r).unwrap();
        let want = serde_json::json!({"spec": "10.128.0.0/12/6/14", "overlay_cidr": "10.128.0.0/12",
            "host_ip": "10.128.0.1/12", "flat": false, "max_runners": 63, "runner_prefix": 18,
            "assignable_per_runner": 16379,
            "runners": [{"id": 1, "subnet": "10.128.64.0/18", "gateway": "10.128.64.1",
            "host_ip_on_subnet": "10.128.64.254", "first": "10.128.64.2", "last": "10.128.127.253",
            "device": "vxkr1", "vni": 101}]});
        assert_eq!(json, want);
    }

    #[test]
    fn plans_roundtrip_through_serde() {
        let p = plan("10.128.0.0/12/6/14");
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(s, "\"10.128.0.0/12/6/14\"");
        let back: Plan = serde_json::from_str(&s).unwrap();
        assert_eq!(back, p);
        let err = serde_json::from_str::<Plan>("\"1.2.3.4/1/2\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 4 parts"), "{err}");
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use crate::prop_support::{config, edgy_u32};
    use proptest::prelude::*;

    /// The numeric parts of every valid plan: PREFIX 1..=23, NODE_BITS 1..=16, SUBNET_BITS
    /// 8..=30, summing to 32, on any base address (host bits included).
    fn valid_parts() -> impl Strategy<Value = (u32, u8, u8, u8)> {
        (1u8..=23)
            .prop_flat_map(|prefix| {
                let lo = 1u8.max(2u8.saturating_sub(prefix));
                let hi = 16u8.min(24 - prefix);
                (edgy_u32(), Just(prefix), lo..=hi)
            })
            .prop_map(|(base, prefix, node)| (base, prefix, node, 32 - prefix - node))
    }

    fn valid_plan() -> impl Strategy<Value = Plan> {
        valid_parts().prop_map(|(b, p, n, s)| {
            Plan::new(Ipv4Addr::from(b), p, n, s).expect("generated parts are valid")
        })
    }

    /// A runner id of `plan`: the ends of the range, or anything between.
    fn runner_id(plan: &Plan) -> impl Strategy<Value = u32> + use<> {
        let max = plan.max_runners();
        prop_oneof![Just(1), Just(max), 1..=max]
    }

    /// Text shaped like a plan: numbers (small, large, negative), dots, slashes, spaces.
    fn plan_like() -> impl Strategy<Value = String> {
        let num = prop_oneof![
            (0u64..=40).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{20,25}",
            "-[0-9]{1,3}",
            "\\+[0-9]{1,2}",
            "[0-9a-fx ]{0,4}",
        ];
        let base = prop_oneof![
            any::<u32>().prop_map(|b| Ipv4Addr::from(b).to_string()),
            "[0-9]{1,4}(\\.[0-9]{1,4}){0,4}",
            ".{0,8}",
        ];
        (
            base,
            proptest::collection::vec(num, 0..6),
            prop_oneof![Just("/"), Just("//"), Just("."), Just(" / ")],
            prop_oneof![Just(""), Just(" "), Just("\n")],
        )
            .prop_map(|(base, nums, sep, pad)| {
                let mut s = format!("{pad}{base}");
                for n in nums {
                    s.push_str(sep);
                    s.push_str(&n);
                }
                s.push_str(pad);
                s
            })
    }

    /// What an accepted plan must satisfy, whatever text it came from.
    fn check_invariants(plan: &Plan) -> Result<(), TestCaseError> {
        let (p, n, s) = (plan.prefix(), plan.node_bits(), plan.subnet_bits());
        prop_assert_eq!(u32::from(p) + u32::from(n) + u32::from(s), 32);
        if plan.is_flat() {
            prop_assert!((8..=29).contains(&p), "flat PREFIX {}", p);
        } else {
            prop_assert!((1..=23).contains(&p), "PREFIX {}", p);
            prop_assert!((1..=16).contains(&n), "NODE_BITS {}", n);
            prop_assert!((8..=30).contains(&s), "SUBNET_BITS {}", s);
        }
        let o = plan.overlay();
        prop_assert_eq!(o.addr(), o.network(), "host bits of BASE cleared");
        prop_assert_eq!(o, o.trunc());
        let text = plan.to_string();
        prop_assert_eq!(text.parse::<Plan>(), Ok(*plan), "{} round-trips", text);
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_plan_parse_never_panics_on_any_text(s in any::<String>()) {
            if let Ok(plan) = s.parse::<Plan>() {
                check_invariants(&plan)?;
            }
        }

        #[test]
        fn prop_plan_parse_never_panics_on_plan_like_text(s in plan_like()) {
            match s.parse::<Plan>() {
                Ok(plan) => check_invariants(&plan)?,
                Err(e) => {
                    // Every refusal quotes the spec it refused.
                    let msg = e.to_string();
                    prop_assert!(msg.contains(&format!("{s:?}")), "{}", msg);
                }
            }
        }

        #[test]
        fn prop_plan_valid_parts_are_accepted_and_round_trip(
            (b, p, n, s) in valid_parts(),
            pad in prop_oneof![Just(""), Just(" "), Just("\t\n")],
        ) {
            let spec = format!("{pad}{}/{p}/{n}/{s}{pad}", Ipv4Addr::from(b));
            let plan: Plan = spec.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            check_invariants(&plan)?;
            prop_assert_eq!((plan.prefix(), plan.node_bits(), plan.subnet_bits()), (p, n, s));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            prop_assert_eq!(u32::from(plan.overlay().network()), b & mask);
            // Through serde as well (the config file and `weir plan --json`).
            let json = serde_json::to_string(&plan).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(serde_json::from_str::<Plan>(&json).ok(), Some(plan));
        }

        #[test]
        fn prop_plan_runner_blocks_are_disjoint_and_inside_the_overlay(
            (plan, a, b) in valid_plan().prop_flat_map(|p| (Just(p), runner_id(&p), runner_id(&p)))
        ) {
            let overlay = plan.overlay();
            let host = plan.host_ip().addr();
            prop_assert!(overlay.contains(&host));
            prop_assert_eq!(plan.runner_of(host), None, "the host's block is no runner's");
            let (ra, rb) = (plan.runner(a).ok(), plan.runner(b).ok());
            let (Some(ra), Some(rb)) = (ra, rb) else {
                return Err(TestCaseError::fail(format!("runner {a} or {b} refused by {plan}")));
            };
            for r in [ra, rb] {
                prop_assert_eq!(r.subnet.prefix_len(), plan.runner_prefix());
                prop_assert_eq!(r.subnet.addr(), r.subnet.network());
                prop_assert!(overlay.contains(&r.subnet), "{} inside {}", r.subnet, overlay);
                prop_assert!(!r.subnet.contains(&host), "{} holds the host {}", r.subnet, host);
                prop_assert_eq!(plan.runner_of(r.subnet.network()), Some(r.id));
                prop_assert_eq!(plan.runner_of(r.subnet.broadcast()), Some(r.id));
            }
            let disjoint = !ra.subnet.contains(&rb.subnet.network())
                && !rb.subnet.contains(&ra.subnet.network());
            prop_assert_eq!(disjoint, a != b, "{} and {}", ra.subnet, rb.subnet);
        }

        #[test]
        fn prop_plan_workload_range_excludes_the_reserved_addresses(
            (plan, id, off) in valid_plan().prop_flat_map(|p| {
                let size = 1u32 << p.subnet_bits();
                // Offsets near both ends of the block (256 only where the block is larger).
                let special: Vec<u32> = [0, 1, 2, 253, 254, 255, 256, size - 3, size - 2, size - 1]
                    .into_iter()
                    .filter(|o| *o < size)
                    .collect();
                (Just(p), runner_id(&p), prop_oneof![
                    proptest::sample::select(special),
                    0..size,
                ])
            })
        ) {
            let r = plan.runner(id).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (net, bcast) = (r.subnet.network(), r.subnet.broadcast());
            let (gw, host_side) = (r.gateway(), r.host_ip_on_subnet());
            for reserved in [net, bcast, gw, host_side] {
                prop_assert!(r.subnet.contains(&reserved));
                prop_assert!(!r.is_assignable(reserved), "{} is reserved in {}", reserved, r.subnet);
            }
            prop_assert!(r.subnet.contains(&r.first()) && r.subnet.contains(&r.last()));
            prop_assert!(r.first() <= r.last());
            let addr = Ipv4Addr::from(u32::from(net) + off);
            let expected = addr >= r.first() && addr <= r.last() && addr != host_side;
            prop_assert_eq!(r.is_assignable(addr), expected, "{} in {}", addr, r.subnet);
            // The count the plan reports is the size of that range.
            let span = u32::from(r.last()) - u32::from(r.first()) + 1;
            let inside = host_side >= r.first() && host_side <= r.last();
            prop_assert_eq!(plan.assignable_per_runner(), span - u32::from(inside));
            prop_assert_eq!(r.vni(7), 7 + id);
        }

        #[test]
        fn prop_plan_addresses_outside_the_overlay_belong_to_no_runner(
            plan in valid_plan(), addr in edgy_u32()
        ) {
            let addr = Ipv4Addr::from(addr);
            match plan.runner_of(addr) {
                Some(id) => {
                    let r = plan.runner(id).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(r.subnet.contains(&addr));
                }
                None => prop_assert!(
                    !plan.overlay().contains(&addr)
                        || u32::from(addr) - u32::from(plan.overlay().network())
                            < (1 << plan.subnet_bits())
                ),
            }
        }

        #[test]
        fn prop_plan_runner_ids_and_vni_bases_are_checked(
            plan in valid_plan(), id in any::<u64>(), base in edgy_u32(),
        ) {
            let ok = id >= 1 && id <= u64::from(plan.max_runners());
            prop_assert_eq!(plan.check_runner(id).is_ok(), ok);
            if !ok {
                let e = plan.check_runner(id).err().map(|e| e.to_string()).unwrap_or_default();
                prop_assert!(e.contains(&format!("runner id {id}")), "{}", e);
            }
            let fits = u64::from(base) + u64::from(plan.max_runners()) <= u64::from(MAX_VNI);
            prop_assert_eq!(plan.check_vni_base(base).is_ok(), fits);
            // The report never panics, whatever ids it is asked about.
            let report = PlanReport::new(&plan, &[id], base, "vxkr");
            prop_assert_eq!(report.is_ok(), ok && fits);
        }

        #[test]
        fn prop_plan_bad_parts_are_named(
            (b, p, n, s) in valid_parts(),
            which in 0usize..4,
            bad in prop_oneof![
                "[a-z]{1,5}", "-[0-9]{1,3}", "[1-9][0-9]{20,23}", Just(String::new()), "[0-9]\\.[0-9]",
            ],
        ) {
            let mut parts = [Ipv4Addr::from(b).to_string(), p.to_string(), n.to_string(), s.to_string()];
            parts[which] = bad.clone();
            let spec = parts.join("/");
            let e = spec.parse::<Plan>().err().map(|e| e.to_string());
            let e = e.ok_or_else(|| TestCaseError::fail(format!("{spec:?} accepted")))?;
            let name = ["BASE", "PREFIX", "NODE_BITS", "SUBNET_BITS"][which];
            prop_assert!(e.contains(&format!("{name} {bad:?}")), "{}: {}", spec, e);
            if which > 0 {
                prop_assert!(e.contains("allowed: "), "{}", e);
            }
        }

        #[test]
        fn prop_plan_out_of_range_parts_are_named(
            (b, p, n, s) in valid_parts(),
            which in 1usize..4,
            value in prop_oneof![0u64..=40, any::<u64>()],
        ) {
            let mut nums = [u64::from(p), u64::from(n), u64::from(s)];
            nums[which - 1] = value;
            let spec = format!("{}/{}/{}/{}", Ipv4Addr::from(b), nums[0], nums[1], nums[2]);
            let ranges = [1..=23u64, 1..=16, 8..=30];
            let names = ["PREFIX", "NODE_BITS", "SUBNET_BITS"];
            let got = spec.parse::<Plan>();
            if !ranges[which - 1].contains(&value) {
                let e = got.err().map(|e| e.to_string()).unwrap_or_default();
                prop_assert!(
                    e.contains(&format!("{} = {value} is out of range", names[which - 1])),
                    "{}: {}", spec, e
                );
            } else if nums.iter().sum::<u64>() != 32 {
                let e = got.err().map(|e| e.to_string()).unwrap_or_default();
                prop_assert!(e.contains("must be 32"), "{}: {}", spec, e);
            } else {
                prop_assert!(got.is_ok(), "{}", spec);
            }
        }

        #[test]
        fn prop_plan_tunnel_names_round_trip(
            prefix in "[a-z-]{0,6}", id in 1u32..=u32::MAX, name in any::<String>(),
        ) {
            let t = tunnel_name(&prefix, id);
            prop_assert_eq!(parse_tunnel_name(&prefix, &t), Some(id));
            if let Some(back) = parse_tunnel_name(&prefix, &name) {
                prop_assert_eq!(tunnel_name(&prefix, back), name);
            }
        }
    }
}
