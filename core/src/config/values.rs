//! Value types of the configuration that check themselves while they are read (network and
//! interface names, durations, sizes, the MTU, collector URLs), and why a value was refused.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::plan;

/// A network's name: 1 to 10 characters of `[a-z0-9]`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkName(String);

impl NetworkName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NetworkName {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let ok = (1..=10).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(ValueError::NetworkName(s.to_string()))
        }
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for NetworkName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NetworkName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A size written like `"16MiB"`, `"512KiB"`, `"1GiB"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| ValueError::NotASize(s.to_string()))?;
        let mult: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(ValueError::SizeUnit {
                    text: s.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        let bytes = n
            .checked_mul(mult)
            .ok_or_else(|| ValueError::SizeTooLarge(s.to_string()))?;
        if bytes < (1 << 16) {
            return Err(ValueError::SizeBelowPage(s.to_string()));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => format!("{n}").parse(),
            Raw::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// A duration written like `"500ms"`, `"5s"`, `"2m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| ValueError::NotADuration {
            text: s.to_string(),
            reason: e.to_string(),
        })?;
        if d.is_zero() {
            return Err(ValueError::ZeroDuration(s.to_string()));
        }
        Ok(Self(d))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// MTU of the overlay: a number, or `"auto"` for the underlay MTU minus the 50 bytes of VXLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    Fixed(u32),
    Auto,
}

/// Bytes of VXLAN over IPv4 encapsulation (outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8).
pub const VXLAN_OVERHEAD: u32 = 50;
pub(super) const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65_535;

impl Mtu {
    /// The MTU to use given the underlay interface's MTU.
    pub fn resolve(self, underlay_mtu: u32) -> u32 {
        match self {
            Mtu::Fixed(m) => m,
            Mtu::Auto => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        }
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtu::Fixed(m) => write!(f, "{m}"),
            Mtu::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Mtu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mtu::Fixed(m) => s.serialize_u32(*m),
            Mtu::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Mtu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i64),
            Text(String),
        }
        let check = |n: i64| -> Result<Mtu, D::Error> {
            u32::try_from(n)
                .ok()
                .filter(|n| MTU_RANGE.contains(n))
                .map(Mtu::Fixed)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "MTU {n} is out of range (allowed: {}..={} or \"auto\")",
                        MTU_RANGE.start(),
                        MTU_RANGE.end()
                    ))
                })
        };
        match Raw::deserialize(d)? {
            Raw::Num(n) => check(n),
            Raw::Text(t) if t.trim().eq_ignore_ascii_case("auto") => Ok(Mtu::Auto),
            // Environment variables arrive as strings.
            Raw::Text(t) => match t.trim().parse::<i64>() {
                Ok(n) => check(n),
                Err(_) => Err(serde::de::Error::custom(format!(
                    "MTU {t:?} is neither a number nor \"auto\""
                ))),
            },
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no '/', whitespace, ':' or NUL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    pub(super) fn new_static(s: &'static str) -> Self {
        Self(s.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        check_ifname(s)?;
        Ok(Self(s.to_string()))
    }
}

/// Check an interface name (or the part of one) against the kernel's rules.
pub fn check_ifname(s: &str) -> Result<(), ValueError> {
    if s.is_empty() || s.len() > plan::MAX_IFNAME_LEN {
        return Err(ValueError::IfNameLength(s.to_string()));
    }
    if s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(ValueError::IfNameCharacters(s.to_string()));
    }
    Ok(())
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for IfName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a value was refused, as its own text (the loader adds the key and its source).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "network name {0:?} must be 1 to 10 characters of a-z and 0-9, starting with a letter (interface names derive from it)"
    )]
    NetworkName(String),
    #[error("{0:?} is not a size like \"16MiB\"")]
    NotASize(String),
    #[error("{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB)")]
    SizeUnit { text: String, unit: String },
    #[error("{0:?} is too large")]
    SizeTooLarge(String),
    #[error("{0:?} is below one WebAssembly page (64KiB)")]
    SizeBelowPage(String),
    #[error("{text:?} is not a duration ({reason}); write it like \"500ms\", \"5s\" or \"2m\"")]
    NotADuration { text: String, reason: String },
    #[error("{0:?} is zero; a positive duration is required")]
    ZeroDuration(String),
    #[error("interface name {0:?} must be 1 to {max} bytes long", max = plan::MAX_IFNAME_LEN)]
    IfNameLength(String),
    #[error("interface name {0:?} may not contain '/', ':', whitespace or be '.'/'..'")]
    IfNameCharacters(String),
}

/// Why an OTLP/gRPC endpoint is not usable (shown after the URL).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("must start with http:// or https:// (OTLP over gRPC, e.g. \"http://127.0.0.1:4317\")")]
    Scheme,
    #[error("names no host")]
    NoHost,
    #[error("is not a valid URL: {0}")]
    NotAUrl(String),
}

/// An OTLP/gRPC endpoint: `http://` or `https://`, a host, optionally a port.
pub fn check_otlp_endpoint(url: &str) -> Result<(), EndpointError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or(EndpointError::Scheme)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(EndpointError::NoHost);
    }
    match url.parse::<http::Uri>() {
        // An authority of only a port or user info (`http://:4317`) names no host either.
        Ok(uri) if uri.host().is_none_or(str::is_empty) => Err(EndpointError::NoHost),
        Ok(_) => Ok(()),
        Err(e) => Err(EndpointError::NotAUrl(e.to_string())),
    }
}

#[cfg(test)]
pub(super) mod prop_tests {
    use super::*;
    use crate::prop_support::{config, lit};
    use proptest::prelude::*;

    /// Text shaped like a duration: numbers with units, spaces, signs, huge numbers.
    pub(in crate::config) fn duration_like() -> impl Strategy<Value = String> {
        let unit = prop_oneof![
            lit(""),
            lit("ns"),
            lit("us"),
            lit("ms"),
            lit("s"),
            lit("m"),
            lit("h"),
            lit("d"),
            lit("w"),
            lit("M"),
            lit("y"),
            lit("years"),
            lit("sec"),
            lit("min"),
            "[a-zA-Z]{1,3}",
        ];
        let num = prop_oneof![
            (0u64..=1000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{18,30}",
            "-[0-9]{1,3}",
            "[0-9]{1,3}\\.[0-9]{1,3}",
        ];
        proptest::collection::vec((num, unit), 1..4).prop_map(|parts| {
            parts
                .into_iter()
                .map(|(n, u)| format!("{n}{u}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    /// Durations from a nanosecond up to the largest `std::time::Duration`.
    fn std_duration() -> impl Strategy<Value = std::time::Duration> {
        prop_oneof![
            (0u64..100_000, 0u32..1_000_000_000),
            (any::<u64>(), 0u32..1_000_000_000),
            (0u64..=64).prop_map(|b| ((1u128 << b).min(u128::from(u64::MAX)) as u64, 0)),
        ]
        .prop_map(|(s, n)| std::time::Duration::new(s, n))
        .prop_filter("positive", |d| !d.is_zero())
    }

    pub(in crate::config) fn size_like() -> impl Strategy<Value = String> {
        let unit = prop_oneof![
            lit(""),
            lit("B"),
            lit("KiB"),
            lit("MiB"),
            lit("GiB"),
            lit("KB"),
            lit("kB"),
            lit("MB"),
            lit("GB"),
            lit(" MiB"),
            lit("TiB"),
            "[a-zA-Z ]{1,4}",
        ];
        let num = prop_oneof![
            (0u64..=100_000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{19,25}",
            "[+-][0-9]{1,4}",
        ];
        (num, unit, prop_oneof![Just(""), Just(" ")])
            .prop_map(|(n, u, pad)| format!("{pad}{n}{u}{pad}"))
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn prop_config_duration_text_never_panics_and_round_trips(
            s in prop_oneof![duration_like(), any::<String>()]
        ) {
            match s.parse::<Duration>() {
                Ok(d) => {
                    prop_assert!(!d.get().is_zero());
                    let shown = d.to_string();
                    prop_assert_eq!(shown.parse::<Duration>(), Ok(d), "{:?} shown as {:?}", s, shown);
                }
                Err(e) => prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e),
            }
        }

        #[test]
        fn prop_config_durations_display_and_parse_back(d in std_duration()) {
            let d = Duration(d);
            let shown = d.to_string();
            prop_assert_eq!(shown.parse::<Duration>(), Ok(d), "shown as {:?}", shown);
        }


        #[test]
        fn prop_config_byte_sizes_never_panic_and_round_trip(
            s in prop_oneof![size_like(), any::<String>()]
        ) {
            match s.parse::<ByteSize>() {
                Ok(b) => {
                    prop_assert!(b.0 >= 1 << 16, "{:?} gave {} bytes", s, b.0);
                    let shown = b.to_string();
                    prop_assert_eq!(shown.parse::<ByteSize>(), Ok(b), "shown as {:?}", shown);
                }
                Err(e) => prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e),
            }
        }

        #[test]
        fn prop_config_byte_size_units_multiply(
            n in prop_oneof![0usize..100_000, any::<usize>()],
            unit in proptest::sample::select(vec![
                ("", 1usize), ("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
                ("KB", 1000), ("kB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
            ]),
        ) {
            let (u, mult) = unit;
            let got = format!("{n}{u}").parse::<ByteSize>();
            match n.checked_mul(mult) {
                Some(b) if b >= 1 << 16 => prop_assert_eq!(got, Ok(ByteSize(b))),
                Some(_) => prop_assert!(got.err().map(|e| e.to_string()).unwrap_or_default().contains("below one")),
                None => prop_assert!(got.err().map(|e| e.to_string()).unwrap_or_default().contains("too large")),
            }
        }

    }
}
