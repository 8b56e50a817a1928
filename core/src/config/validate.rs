//! Checks that involve more than one key (networks that must not overlap, plugins, TTLs,
//! limits, telemetry, namespace directories); every problem names its key and source.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::load::{ConfigError, LoadedConfig};
use super::networks::DEFAULT_NETWORK;
use super::schema::PluginMode;
use super::values::{check_ifname, check_otlp_endpoint};
use crate::plan;

/// Prefix lengths of an isolated-mode subnet: not all of IPv4 (/0 would swallow the runner's
/// default route), and big enough for the bridge (`.1`) and at least one workload (`.2` up to
/// broadcast − 2, so /29 gives four).
const ISOLATED_PREFIX: std::ops::RangeInclusive<u8> = 1..=29;

/// Checks that involve more than one key.
pub(super) fn validate(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    let mut problems = validate_networks(loaded);
    problems.extend(validate_plugins(loaded));
    let r = &loaded.config.reservations;
    if !(r.min_ttl <= r.default_ttl && r.default_ttl <= r.max_ttl) {
        problems.push(format!(
            "reservations.default_ttl ({}): {} must lie between min_ttl {} and max_ttl {}",
            loaded.source_of("reservations.default_ttl"),
            r.default_ttl,
            r.min_ttl,
            r.max_ttl
        ));
    }
    problems.extend(validate_telemetry(loaded));
    problems.extend(validate_netns_allow(loaded));
    problems.extend(validate_store(loaded));
    problems.extend(validate_failover(loaded));
    let h = &loaded.config.host;
    for (key, value, max) in [
        ("host.max_concurrent_calls", h.max_concurrent_calls, 65_536),
        (
            "host.unauthenticated_calls_per_second",
            h.unauthenticated_calls_per_second,
            1_000_000,
        ),
    ] {
        if !(1..=max).contains(&value) {
            problems.push(format!(
                "{key} ({}): {value} is out of range (allowed: 1 to {max})",
                loaded.source_of(key)
            ));
        }
    }
    let iso = loaded.config.overlay.isolated_subnet;
    if !ISOLATED_PREFIX.contains(&iso.prefix_len()) {
        problems.push(format!(
            "overlay.isolated_subnet ({}): {iso} leaves no room for a runner's bridge and workloads (allowed prefix lengths: /{} to /{}; .1 is the bridge, .2 to broadcast − 2 the workloads)",
            loaded.source_of("overlay.isolated_subnet"),
            ISOLATED_PREFIX.start(),
            ISOLATED_PREFIX.end()
        ));
    }
    if let Some(vm) = loaded.config.overlay.vm_subnet {
        let src = loaded.source_of("overlay.vm_subnet");
        if !ISOLATED_PREFIX.contains(&vm.prefix_len()) {
            problems.push(format!(
                "overlay.vm_subnet ({src}): {vm} leaves no room for a runner's VM bridge and VMs (allowed prefix lengths: /{} to /{})",
                ISOLATED_PREFIX.start(),
                ISOLATED_PREFIX.end()
            ));
        }
        if vm.contains(&iso.network()) || iso.contains(&vm.network()) {
            problems.push(format!(
                "overlay.vm_subnet ({src}): {vm} overlaps overlay.isolated_subnet {iso}; the VMs' bridge needs addresses of its own"
            ));
        }
        if !loaded.config.networks.is_empty() {
            problems.push(format!(
                "overlay.vm_subnet ({src}): only for isolated mode (overlay.enabled = false); with [[networks]], VMs attach to an overlay"
            ));
        }
    }
    if let Some(name) = &loaded.config.runner.name
        && (name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control()))
    {
        problems.push(format!(
            "runner.name ({}): {name:?} must be 1 to 253 printable characters",
            loaded.source_of("runner.name")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The keys of several hosts: a name the leader key can carry, URLs that are URLs, a lease
/// etcd can keep.
fn validate_failover(loaded: &LoadedConfig) -> Vec<String> {
    let c = &loaded.config;
    let mut problems = Vec::new();
    if let Some(n) = &c.host.name
        && (n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)))
    {
        problems.push(format!(
            "host.name ({}): {n:?} is not a host name (allowed: 1 to 64 letters, digits, '-', '_' or '.')",
            loaded.source_of("host.name")
        ));
    }
    let url_ok = |u: &str| {
        ["http://", "https://"].iter().any(|scheme| {
            u.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(' ') && !rest.contains(','))
        })
    };
    if let Some(u) = &c.host.url
        && !url_ok(u)
    {
        problems.push(format!(
            "host.url ({}): {u:?} is not a URL others can reach this host at (allowed: http://HOST:PORT or https://HOST:PORT)",
            loaded.source_of("host.url")
        ));
    }
    let ttl = c.host.lease_ttl.get();
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&ttl) {
        problems.push(format!(
            "host.lease_ttl ({}): {} is out of range (allowed: 1s to 300s; etcd keeps leases in whole seconds)",
            loaded.source_of("host.lease_ttl"),
            humantime::format_duration(ttl)
        ));
    }
    for u in &c.runner.hosts {
        if !url_ok(u) && !u.starts_with("unix://") {
            problems.push(format!(
                "runner.hosts ({}): {u:?} is not a host URL (allowed: http://HOST:PORT or https://HOST:PORT)",
                loaded.source_of("runner.hosts")
            ));
        }
    }
    problems
}

/// `[store]`: endpoints that are URLs, a prefix that is a key path, TLS and auth in pairs.
fn validate_store(loaded: &LoadedConfig) -> Vec<String> {
    let s = &loaded.config.store;
    let mut problems = Vec::new();
    let src = |k: &str| loaded.source_of(k);
    if s.backend == super::schema::StoreBackend::Etcd && s.endpoints.is_empty() {
        problems.push(format!(
            "store.endpoints ({}): empty; the etcd back end needs at least one client URL, e.g. [\"http://10.0.0.5:2379\"]",
            src("store.endpoints")
        ));
    }
    for e in &s.endpoints {
        let ok = ["http://", "https://"].iter().any(|scheme| {
            e.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/') && !rest.contains(' '))
        });
        if !ok {
            problems.push(format!(
                "store.endpoints ({}): {e:?} is not an etcd client URL (allowed: http://HOST:PORT or https://HOST:PORT, no path)",
                src("store.endpoints")
            ));
        }
    }
    if !s.prefix.starts_with('/')
        || s.prefix.len() > 200
        || s.prefix.chars().any(|c| c.is_control())
    {
        problems.push(format!(
            "store.prefix ({}): {:?} must start with '/' and be 1 to 200 printable characters (e.g. \"/weir/\")",
            src("store.prefix"),
            s.prefix
        ));
    }
    if s.password_file.is_some() != s.username.is_some() {
        problems.push(format!(
            "store.username/store.password_file ({}): give both or neither",
            src("store.username")
        ));
    }
    if s.tls_cert.is_some() != s.tls_key.is_some() {
        problems.push(format!(
            "store.tls_cert/store.tls_key ({}): give both or neither",
            src("store.tls_cert")
        ));
    }
    if !(16..=100_000).contains(&s.max_txn_ops) {
        problems.push(format!(
            "store.max_txn_ops ({}): {} is out of range (allowed: 16 to 100000; etcd's default is 128)",
            src("store.max_txn_ops"),
            s.max_txn_ops
        ));
    }
    for (key, d) in [
        ("store.timeout", s.timeout),
        ("store.resolve_timeout", s.resolve_timeout),
    ] {
        if d.0.is_zero() {
            problems.push(format!("{key} ({}): must be more than 0", src(key)));
        }
    }
    problems
}

/// What only the host checks (a runner reads the same file and ignores `[host]`): a listener
/// that is not loopback needs TLS, or `host.allow_plaintext`. `Ok(Some(warning))`: plaintext
/// allowed, to be logged at start.
pub fn validate_host(loaded: &LoadedConfig) -> Result<Option<String>, ConfigError> {
    let h = &loaded.config.host;
    let tls = h.tls_cert.is_some() && h.tls_key.is_some();
    if tls || h.listen.ip().is_loopback() {
        return Ok(None);
    }
    if h.allow_plaintext {
        return Ok(Some(format!(
            "host.allow_plaintext = true ({}): host.listen {} serves plaintext gRPC: control and join tokens cross the network in clear text; set host.tls_cert and host.tls_key (weir certs makes them) outside a lab",
            loaded.source_of("host.allow_plaintext"),
            h.listen
        )));
    }
    Err(ConfigError::Invalid(vec![format!(
        "host.listen ({}): {} is not a loopback address and host.tls_cert/host.tls_key are not set, so control and join tokens would cross the network in clear text; set host.tls_cert and host.tls_key (`weir certs ca` and `weir certs host` make them), listen on a loopback address, or set host.allow_plaintext = true to serve plaintext anyway",
        loaded.source_of("host.listen"),
        h.listen
    )]))
}

/// A network's interface names as patterns: an exact name, or a prefix + a base-36 id.
#[derive(Debug, Clone, Copy)]
enum NamePattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

impl fmt::Display for NamePattern<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => write!(f, "{n:?}"),
            NamePattern::Prefix(p) => write!(f, "\"{p}<id>\""),
        }
    }
}

impl NamePattern<'_> {
    fn clashes(self, other: NamePattern<'_>) -> bool {
        use NamePattern::*;
        let id_after = |name: &str, prefix: &str| {
            name.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            })
        };
        match (self, other) {
            (Exact(a), Exact(b)) => a == b,
            (Exact(n), Prefix(p)) | (Prefix(p), Exact(n)) => id_after(n, p),
            (Prefix(p), Prefix(q)) => p.starts_with(q) || q.starts_with(p),
        }
    }
}

/// Networks: `[[networks]]` or `[overlay]` (not both), unique names, VNIs that fit, and no two
/// networks sharing addresses, VNIs or interface names. Every message names both networks.
fn validate_networks(loaded: &LoadedConfig) -> Vec<String> {
    let c = &loaded.config;
    let mut problems = Vec::new();
    let from_overlay = c.networks.is_empty();
    let key = |net: &str, field: &str| {
        if from_overlay {
            format!(
                "overlay.{field} ({})",
                loaded.source_of(&format!("overlay.{field}"))
            )
        } else {
            format!(
                "networks {net:?} {field} ({})",
                loaded.source_of("networks")
            )
        }
    };
    if !from_overlay {
        for k in ["overlay.enabled", "overlay.subnet", "overlay.vxlan_id_base"] {
            if loaded.is_explicit(k) {
                problems.push(format!(
                    "{k} ({}): not used when [[networks]] is set: give each network its own subnet and vxlan_id_base there (one named \"default\" keeps KohakuRiver's interface names)",
                    loaded.source_of(k)
                ));
            }
        }
    }
    let nets = c.resolved_networks();
    let mut patterns: Vec<(&str, &str, NamePattern<'_>)> = Vec::new();
    for n in &nets {
        let names = &n.names;
        if let Some(plan) = &n.plan {
            if let Err(e) = plan.check_vni_base(n.vxlan_id_base) {
                problems.push(format!("{}: {e}", key(&n.name, "vxlan_id_base")));
            }
            for (field, prefix) in [
                ("tunnel_prefix", &names.tunnel_prefix),
                ("direct_prefix", &names.direct_prefix),
            ] {
                let longest = plan::tunnel_name(prefix, plan.max_runners());
                if prefix.is_empty() || check_ifname(&longest).is_err() {
                    problems.push(format!(
                        "{}: {prefix:?} gives interface names up to {longest:?}, which must be 1 to {} bytes without '/', ':' or whitespace{}",
                        key(&n.name, field),
                        plan::MAX_IFNAME_LEN,
                        if from_overlay { "" } else { "; give the network a shorter name or set tunnel_prefix" }
                    ));
                }
                patterns.push((&n.name, field, NamePattern::Prefix(prefix)));
            }
            patterns.push((
                &n.name,
                "host_device",
                NamePattern::Exact(&names.host_device),
            ));
            patterns.push((
                &n.name,
                "runner_tunnel",
                NamePattern::Exact(&names.runner_tunnel),
            ));
        }
        patterns.push((
            &n.name,
            "runner_bridge",
            NamePattern::Exact(&names.runner_bridge),
        ));
        for (field, name) in [
            ("host_device", &names.host_device),
            ("runner_tunnel", &names.runner_tunnel),
            ("runner_bridge", &names.runner_bridge),
        ] {
            if let Err(e) = check_ifname(name) {
                problems.push(format!("{}: {e}", key(&n.name, field)));
            }
        }
    }
    if from_overlay && c.overlay.enabled {
        // Switching to isolated mode later must not collide either.
        patterns.push((
            DEFAULT_NETWORK,
            "isolated_bridge",
            NamePattern::Exact(c.overlay.isolated_bridge.as_str()),
        ));
    }
    for (i, (na, fa, pa)) in patterns.iter().enumerate() {
        for (nb, fb, pb) in &patterns[i + 1..] {
            // Networks may share the device that carries their host addresses (KohakuRiver's
            // `kohaku-host` carries every network's).
            if !pa.clashes(*pb) || (*fa == "host_device" && *fb == "host_device" && na != nb) {
                continue;
            }
            problems.push(if na == nb {
                format!(
                    "{}: {pb} is already used by {} {pa}: every interface name must be distinct",
                    key(nb, fb),
                    key(na, fa)
                )
            } else {
                format!(
                    "networks {na:?} and {nb:?}: {na}'s {fa} {pa} clashes with {nb}'s {fb} {pb} ({}): interface names must not overlap",
                    loaded.source_of("networks")
                )
            });
        }
    }
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            let src = loaded.source_of("networks");
            if a.name == b.name {
                problems.push(format!(
                    "networks ({src}): two networks are named {:?}; names must be unique",
                    a.name
                ));
                continue;
            }
            let (Some(pa), Some(pb)) = (&a.plan, &b.plan) else {
                continue;
            };
            let (ca, cb) = (pa.overlay(), pb.overlay());
            if ca.contains(&cb.network()) || cb.contains(&ca.network()) {
                problems.push(format!(
                    "networks {:?} and {:?} ({src}): subnets {ca} and {cb} overlap; every network needs its own addresses",
                    a.name, b.name
                ));
            }
            let ra = (
                a.vxlan_id_base.saturating_add(1),
                a.vxlan_id_base.saturating_add(pa.max_runners()),
            );
            let rb = (
                b.vxlan_id_base.saturating_add(1),
                b.vxlan_id_base.saturating_add(pb.max_runners()),
            );
            if ra.0 <= rb.1 && rb.0 <= ra.1 {
                problems.push(format!(
                    "networks {:?} and {:?} ({src}): VNI ranges {}-{} and {}-{} overlap (VNI = vxlan_id_base + runner id); move one vxlan_id_base",
                    a.name, b.name, ra.0, ra.1, rb.0, rb.1
                ));
            }
        }
    }
    problems
}

/// Telemetry: a ratio in range, a usable collector URL, a non-zero export interval.
fn validate_telemetry(loaded: &LoadedConfig) -> Vec<String> {
    let t = &loaded.config.telemetry;
    let mut problems = Vec::new();
    if !(0.0..=1.0).contains(&t.sampling_ratio) {
        problems.push(format!(
            "telemetry.sampling_ratio ({}): {} must lie between 0.0 (record no new trace) and 1.0 (record all)",
            loaded.source_of("telemetry.sampling_ratio"),
            t.sampling_ratio
        ));
    }
    if let Some(url) = &t.otlp_endpoint
        && let Err(why) = check_otlp_endpoint(url)
    {
        problems.push(format!(
            "telemetry.otlp_endpoint ({}): {url:?} {why}",
            loaded.source_of("telemetry.otlp_endpoint")
        ));
    }
    if t.export_interval.get().is_zero() {
        problems.push(format!(
            "telemetry.export_interval ({}): must be above zero (e.g. \"5s\")",
            loaded.source_of("telemetry.export_interval")
        ));
    }
    if let Some(name) = &t.service_name
        && name.trim().is_empty()
    {
        problems.push(format!(
            "telemetry.service_name ({}): must not be empty",
            loaded.source_of("telemetry.service_name")
        ));
    }
    problems
}

/// Plugin entries: a name, exactly one of path/endpoint, known hooks, one enforcer per hook.
fn validate_plugins(loaded: &LoadedConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let src = loaded.source_of("policy");
    let mut names = BTreeSet::new();
    let mut enforcers: BTreeMap<String, String> = BTreeMap::new();
    for (i, p) in loaded.config.policy.plugins.iter().enumerate() {
        let at = format!("policy.plugins[{i}] ({src})");
        if p.name.is_empty()
            || p.name.len() > 63
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!(
                "{at}: name {:?} must be 1 to 63 letters, digits, '-' or '_'",
                p.name
            ));
        } else if !names.insert(p.name.clone()) {
            problems.push(format!("{at}: name {:?} is used by another plugin", p.name));
        }
        match (&p.path, &p.endpoint) {
            (Some(_), Some(_)) => problems.push(format!(
                "{at} {:?}: give path (a .wasm component) or endpoint (a gRPC plugin), not both",
                p.name
            )),
            (None, None) => problems.push(format!(
                "{at} {:?}: give path (a .wasm component) or endpoint (a gRPC plugin)",
                p.name
            )),
            _ => {}
        }
        if p.hooks.is_empty() {
            problems.push(format!(
                "{at} {:?}: hooks must name at least one of allocator, firewall, router",
                p.name
            ));
        }
        for h in &p.hooks {
            if !["allocator", "firewall", "router"].contains(&h.as_str()) {
                problems.push(format!(
                    "{at} {:?}: unknown hook {h:?} (allowed: allocator, firewall, router)",
                    p.name
                ));
            } else if p.mode == PluginMode::Enforce
                && let Some(other) = enforcers.insert(h.clone(), p.name.clone())
            {
                problems.push(format!(
                    "{at} {:?}: plugins {other:?} and {:?} both enforce the {h} hook; make one of them mode = \"monitor\"",
                    p.name, p.name
                ));
            }
        }
        if p.max_output == 0 {
            problems.push(format!("{at} {:?}: max_output must be at least 1", p.name));
        }
    }
    problems
}

/// Problems of `runner.netns_allow`: every entry an absolute, normalised directory that is
/// neither `/` nor below `/proc` (namespaces of processes: `runner.netns_allow_pids`).
fn validate_netns_allow(loaded: &LoadedConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for p in &loaded.config.runner.netns_allow {
        // A trailing slash is fine for a directory.
        let text = p.as_os_str().to_string_lossy();
        let trimmed = Path::new(
            text.strip_suffix('/')
                .filter(|t| !t.is_empty())
                .unwrap_or(&text),
        );
        let why = if trimmed == Path::new("/") {
            Some("it is \"/\", which would allow every path".into())
        } else if let Some(why) = crate::netns_path::not_normalised(trimmed) {
            Some(why)
        } else if trimmed.starts_with("/proc") {
            Some(
                "it is below /proc (allow processes' namespaces with runner.netns_allow_pids)"
                    .into(),
            )
        } else if text.len() > crate::netns_path::MAX_PATH_LEN {
            Some(format!(
                "it is longer than {} bytes",
                crate::netns_path::MAX_PATH_LEN
            ))
        } else {
            None
        };
        if let Some(why) = why {
            problems.push(format!(
                "runner.netns_allow ({}): {p:?} is not a usable directory: {why}; each entry must be an absolute, normalised directory such as \"/run/netns/\"",
                loaded.source_of("runner.netns_allow")
            ));
        }
    }
    problems
}
