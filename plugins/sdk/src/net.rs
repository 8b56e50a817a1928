//! IPv4 addresses and CIDRs. The WIT carries addresses as numbers (`u32`, 10.0.0.1 is
//! 0x0a000001) and CIDRs as `cidr` records; settings come as text (`a.b.c.d`, `a.b.c.d/n`).

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// The address a WIT `ipv4` number stands for.
pub fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(n)
}

/// The WIT `ipv4` number of an address.
pub fn num(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// Parse a dotted-quad IPv4 address (surrounding whitespace is ignored).
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

/// Format an address (an [`Ipv4Addr`], a `u32` or `[u8; 4]`) as a dotted quad.
pub fn format_ipv4(addr: impl Into<Ipv4Addr>) -> String {
    addr.into().to_string()
}

/// Every address from `first` to `last`, both included (none if `first > last`).
/// Iterate it backwards with `.rev()`.
pub fn addresses(first: Ipv4Addr, last: Ipv4Addr) -> Addresses {
    (u32::from(first)..=u32::from(last)).map(Ipv4Addr::from)
}

/// The iterator of [`addresses`] and [`Cidr::addresses`].
pub type Addresses = std::iter::Map<RangeInclusive<u32>, fn(u32) -> Ipv4Addr>;

/// An IPv4 network: `a.b.c.d/n`.
///
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`); a bare address is a `/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with a `prefix`-bit mask (`prefix` at most 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is longer than 32 bits"));
        }
        Ok(Self {
            network: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    /// Parse `a.b.c.d/n` (or a bare `a.b.c.d`, a `/32`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, p),
            None => (t, "32"),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR (a.b.c.d/n): bad address"))?;
        let prefix: u8 = match prefix.parse() {
            Ok(p) if p <= 32 && !prefix.starts_with('+') => p,
            _ => return Err(format!("{s:?} is not a CIDR (a.b.c.d/n): bad prefix")),
        };
        Self::new(addr, prefix)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask (`/24` is `255.255.255.0`).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The last address of the network.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network | !mask(self.prefix))
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == self.network
    }

    /// The address `offset` past the network address, if it is still inside
    /// (`10.0.1.0/24`.nth(254) is `10.0.1.254`).
    pub fn nth(&self, offset: u32) -> Option<Ipv4Addr> {
        let addr = Ipv4Addr::from(self.network.checked_add(offset)?);
        self.contains(addr).then_some(addr)
    }

    /// Every address of the network, network and broadcast included.
    pub fn addresses(&self) -> Addresses {
        addresses(self.network(), self.broadcast())
    }
}

impl From<crate::types::Cidr> for Cidr {
    /// A WIT `cidr` (a prefix above 32 is taken as 32).
    fn from(c: crate::types::Cidr) -> Self {
        let prefix = c.prefix.min(32);
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Self {
            network: c.address & mask,
            prefix,
        }
    }
}

impl From<Cidr> for crate::types::Cidr {
    fn from(c: Cidr) -> Self {
        Self {
            address: c.network,
            prefix: c.prefix,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Parse a comma-separated list of CIDRs (`"192.0.2.8/30, 10.0.0.0/8"`). An empty list, an
/// empty item or a malformed item is an error.
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    if s.trim().is_empty() {
        return Err("the list of CIDRs is empty".into());
    }
    s.split(',')
        .map(|item| {
            if item.trim().is_empty() {
                Err(format!("{s:?} has an empty item"))
            } else {
                Cidr::parse(item)
            }
        })
        .collect()
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_format_addresses() {
        assert_eq!(parse_ipv4(" 10.0.0.1 ").unwrap(), ip("10.0.0.1"));
        assert!(parse_ipv4("10.0.0").is_err());
        assert!(parse_ipv4("10.0.0.256").is_err());
        assert!(parse_ipv4("").unwrap_err().contains("not an IPv4 address"));
        assert_eq!(format_ipv4(0x0a80_40feu32), "10.128.64.254");
        assert_eq!(format_ipv4([192, 0, 2, 9]), "192.0.2.9");
    }

    #[test]
    fn cidr_parse_normalises_and_formats() {
        let c = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(c.network(), ip("10.0.0.0"));
        assert_eq!(c.broadcast(), ip("10.255.255.255"));
        assert_eq!(c.netmask(), ip("255.0.0.0"));
        assert_eq!(
            Cidr::parse("192.0.2.9").unwrap().to_string(),
            "192.0.2.9/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().broadcast(),
            ip("255.255.255.255")
        );
    }

    #[test]
    fn cidr_parse_rejects_garbage() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "10.0.0.0/8/8",
            "ten/8",
            "10.0.0.0 /x",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::parse("192.0.2.8/30").unwrap();
        assert!(!c.contains(ip("192.0.2.7")));
        for a in ["192.0.2.8", "192.0.2.9", "192.0.2.10", "192.0.2.11"] {
            assert!(c.contains(ip(a)), "{a}");
        }
        assert!(!c.contains(ip("192.0.2.12")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.1"))
        );
        let host = Cidr::parse("203.0.113.1/32").unwrap();
        assert!(host.contains(ip("203.0.113.1")));
        assert!(!host.contains(ip("203.0.113.2")));
    }

    #[test]
    fn nth_stays_inside() {
        let c = Cidr::parse("10.128.64.0/18").unwrap();
        assert_eq!(c.nth(254), Some(ip("10.128.64.254")));
        assert_eq!(Cidr::parse("10.0.1.0/25").unwrap().nth(254), None);
        assert_eq!(Cidr::parse("255.255.255.255/32").unwrap().nth(1), None);
    }

    #[test]
    fn iterate_addresses() {
        let c = Cidr::parse("192.0.2.8/30").unwrap();
        let all: Vec<String> = c.addresses().map(|a| a.to_string()).collect();
        assert_eq!(all, ["192.0.2.8", "192.0.2.9", "192.0.2.10", "192.0.2.11"]);
        let down: Vec<Ipv4Addr> = addresses(ip("10.0.0.254"), ip("10.0.1.1")).rev().collect();
        assert_eq!(
            down,
            [
                ip("10.0.1.1"),
                ip("10.0.1.0"),
                ip("10.0.0.255"),
                ip("10.0.0.254")
            ]
        );
        assert_eq!(addresses(ip("10.0.0.2"), ip("10.0.0.1")).count(), 0);
        assert_eq!(
            Cidr::parse("255.255.255.254/31")
                .unwrap()
                .addresses()
                .count(),
            2
        );
    }

    #[test]
    fn cidr_lists() {
        let l = parse_cidr_list("192.0.2.8/30, 10.0.0.0/8").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].to_string(), "10.0.0.0/8");
        assert!(parse_cidr_list("").is_err());
        assert!(parse_cidr_list("  ").is_err());
        assert!(
            parse_cidr_list("10.0.0.0/8,")
                .unwrap_err()
                .contains("empty item")
        );
        assert!(parse_cidr_list("10.0.0.0/8,banana").is_err());
    }
}
