//! netavark's plugin API (netavark ≥ 1.6, checked against 2.1's `src/network/types.rs` and
//! `src/network/plugin.rs`): the part of its JSON this plugin reads and writes, and how it maps
//! onto `weir.v1.Local`. Pure functions, so the mapping is tested without a runner.
//!
//! netavark executes `PLUGIN create` (stdin: a `Network`; stdout: the network as it should be
//! stored), `PLUGIN setup NETNS` and `PLUGIN teardown NETNS` (stdin: a `NetworkPluginExec`:
//! `container_id`, `container_name`, `port_mappings`, `network` and `network_options`, the
//! container's options for this one network; setup's stdout: a `StatusBlock`), and `PLUGIN info`.
//! An error is `{"error": "…"}` on stdout with a non-zero exit status; netavark shows it as
//! `plugin "NAME" failed: exit code 1, message: …`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_proto::v1 as pb;

/// The runner's local socket when the network does not name one.
pub const DEFAULT_SOCKET: &str = "/run/weir/runner.sock";
/// The only plugin API version netavark 2.1 knows.
pub const API_VERSION: &str = "1.0.0";

/// Network options (`podman network create -o KEY=VALUE`).
pub const OPT_SOCKET: &str = "socket";
pub const OPT_NETWORK: &str = "weir.network";
/// A label of every container of the network (`weir.label.KEY=VALUE`), or of one container
/// when given in its own options (`--network NAME:weir.label.KEY=VALUE`).
pub const OPT_LABEL_PREFIX: &str = "weir.label.";
/// A container's reservation token (`--network NAME:weir.reservation=TOKEN`).
pub const OPT_RESERVATION: &str = "weir.reservation";

/// Why a request cannot be served. The messages name the field and say why; netavark passes
/// them to its caller (podman prints them).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("usage: weir-netavark create | setup NETNS | teardown NETNS | info ({0})")]
    Usage(String),
    #[error("stdin: {0}")]
    Input(String),
    #[error("{field}: {why}")]
    Field { field: String, why: String },
    #[error("the Weir runner does not answer at {socket} (is `weir runner` running?): {cause}")]
    Unreachable { socket: String, cause: String },
    #[error("{what}: {message} ({kind})")]
    Refused {
        what: &'static str,
        message: String,
        kind: String,
    },
    #[error("{0}")]
    Internal(String),
}

fn field(field: impl Into<String>, why: impl Into<String>) -> Error {
    Error::Field {
        field: field.into(),
        why: why.into(),
    }
}

/// netavark's `Network`, the fields this plugin reads (the rest is kept as it came).
#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    pub name: String,
    #[serde(default)]
    pub ipv6_enabled: bool,
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
}

/// netavark's `PerNetworkOptions`: one container's options on one network.
#[derive(Debug, Clone, Deserialize)]
pub struct PerNetworkOptions {
    pub interface_name: String,
    #[serde(default)]
    pub static_ips: Option<Vec<IpAddr>>,
    #[serde(default)]
    pub static_mac: Option<String>,
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
}

/// netavark's `NetworkPluginExec`: the stdin of `setup` and `teardown`.
#[derive(Debug, Clone, Deserialize)]
pub struct PluginExec {
    pub container_id: String,
    #[serde(default)]
    pub port_mappings: Option<Vec<Value>>,
    pub network: Network,
    pub network_options: PerNetworkOptions,
}

impl PluginExec {
    pub fn parse(stdin: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(stdin)
            .map_err(|e| Error::Input(format!("not netavark's setup/teardown input: {e}")))
    }
}

/// What the network's options say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub socket: String,
    /// The Weir network; empty: the primary one.
    pub network: String,
    pub labels: BTreeMap<String, String>,
}

/// Read a network's `options` (refusing what this plugin does not know, so a typo fails at
/// `podman network create` rather than being ignored).
pub fn net_conf(options: Option<&HashMap<String, String>>) -> Result<NetConf, Error> {
    let mut c = NetConf {
        socket: DEFAULT_SOCKET.to_string(),
        network: String::new(),
        labels: BTreeMap::new(),
    };
    for (k, v) in options.into_iter().flatten() {
        let f = || format!("options.{k}");
        match k.as_str() {
            OPT_SOCKET => {
                if !v.starts_with('/') {
                    return Err(field(
                        f(),
                        format!("{v:?} is not an absolute path (the runner's runner.socket)"),
                    ));
                }
                c.socket = v.clone();
            }
            OPT_NETWORK => {
                if !name_ok(v) {
                    return Err(field(
                        f(),
                        format!(
                            "{v:?} is not a Weir network name (1 to 64 letters, digits, '.', '_' or '-')"
                        ),
                    ));
                }
                c.network = v.clone();
            }
            _ if k.starts_with(OPT_LABEL_PREFIX) => {
                let key = label_key(k, &f())?;
                c.labels.insert(key, v.clone());
            }
            _ => {
                return Err(field(
                    f(),
                    format!(
                        "not an option of weir-netavark (it knows {OPT_SOCKET}, {OPT_NETWORK} and {OPT_LABEL_PREFIX}KEY)"
                    ),
                ));
            }
        }
    }
    Ok(c)
}

fn label_key(option: &str, field_name: &str) -> Result<String, Error> {
    let key = &option[OPT_LABEL_PREFIX.len()..];
    if key.is_empty() {
        return Err(field(
            field_name,
            format!("a label needs a key: {OPT_LABEL_PREFIX}KEY=VALUE"),
        ));
    }
    Ok(key.to_string())
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The origin Weir records: `netavark/<network name>`.
pub fn origin(network: &Network) -> Result<String, Error> {
    if name_ok(&network.name) {
        Ok(format!("netavark/{}", network.name))
    } else {
        Err(field(
            "network.name",
            format!(
                "{:?}: Weir records the origin netavark/NAME, NAME 1 to 64 letters, digits, '.', '_' or '-'",
                network.name
            ),
        ))
    }
}

/// The workload id: the container's id as netavark gives it (podman: 64 hex digits).
pub fn workload_id(exec: &PluginExec) -> Result<String, Error> {
    let id = &exec.container_id;
    if id.is_empty()
        || id.len() > 128
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(field(
            "container_id",
            format!("{id:?}: must be 1 to 128 letters, digits, '.', '_' or '-'"),
        ));
    }
    Ok(id.clone())
}

fn netns_ok(netns: &str) -> Result<(), Error> {
    if netns.starts_with('/') {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "the namespace argument {netns:?} is not an absolute path"
        )))
    }
}

/// The attach a `setup` asks for (the reservation token from the container's options, else
/// `WEIR_RESERVATION` in the plugin's environment, which netavark inherits from podman).
pub fn attach_request(
    exec: &PluginExec,
    netns: &str,
    env_reservation: Option<String>,
) -> Result<(NetConf, pb::LocalAttachRequest), Error> {
    netns_ok(netns)?;
    let conf = net_conf(exec.network.options.as_ref())?;
    let workload_id = workload_id(exec)?;
    let origin = origin(&exec.network)?;
    let o = &exec.network_options;
    if o.interface_name.is_empty() {
        return Err(field(
            "network_options.interface_name",
            "empty: netavark names the container's interface",
        ));
    }
    if let Some(mac) = o.static_mac.as_deref().filter(|m| !m.is_empty()) {
        return Err(field(
            "network_options.static_mac",
            format!(
                "{mac}: Weir gives each container interface its own fixed MAC (02:57:…); a chosen MAC (--mac-address) is not supported"
            ),
        ));
    }
    if let Some(ports) = exec.port_mappings.as_ref().filter(|p| !p.is_empty()) {
        return Err(field(
            "port_mappings",
            format!(
                "{} mapping(s): weir-netavark publishes no ports (-p); reach the container at its overlay address",
                ports.len()
            ),
        ));
    }
    let ips: Vec<IpAddr> = o.static_ips.clone().unwrap_or_default();
    let requested_ip = match ips.as_slice() {
        [] => String::new(),
        [IpAddr::V4(ip)] => ip.to_string(),
        [IpAddr::V6(ip)] => {
            return Err(field(
                "network_options.static_ips",
                format!("{ip}: Weir gives containers IPv4 addresses only"),
            ));
        }
        many => {
            return Err(field(
                "network_options.static_ips",
                format!(
                    "{}: one IPv4 address per interface",
                    many.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    let mut labels = conf.labels.clone();
    let mut reservation = None;
    for (k, v) in o.options.iter().flatten() {
        let f = || format!("network_options.options.{k}");
        match k.as_str() {
            OPT_RESERVATION => {
                if v.trim().is_empty() {
                    return Err(field(f(), "empty: give the token ReserveAddress answered"));
                }
                reservation = Some(v.clone());
            }
            _ if k.starts_with(OPT_LABEL_PREFIX) => {
                labels.insert(label_key(k, &f())?, v.clone());
            }
            _ => {
                return Err(field(
                    f(),
                    format!(
                        "not a container option of weir-netavark (it knows {OPT_RESERVATION} and {OPT_LABEL_PREFIX}KEY)"
                    ),
                ));
            }
        }
    }
    let reservation = reservation.or(env_reservation.filter(|t| !t.trim().is_empty()));
    let req = pb::LocalAttachRequest {
        origin,
        workload_id,
        netns: netns.to_string(),
        network: conf.network.clone(),
        labels: labels.into_iter().collect(),
        requested_ip,
        reservation_token: reservation.unwrap_or_default(),
        ifname: o.interface_name.clone(),
        ..Default::default()
    };
    Ok((conf, req))
}

/// The detach a `teardown` asks for.
pub fn detach_request(
    exec: &PluginExec,
    netns: &str,
) -> Result<(NetConf, pb::LocalDetachRequest), Error> {
    netns_ok(netns)?;
    let conf = net_conf(exec.network.options.as_ref())?;
    let req = pb::LocalDetachRequest {
        workload_id: workload_id(exec)?,
        network: conf.network.clone(),
    };
    Ok((conf, req))
}

/// netavark's `StatusBlock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusBlock {
    pub dns_search_domains: Option<Vec<String>>,
    pub dns_server_ips: Option<Vec<IpAddr>>,
    pub interfaces: Option<BTreeMap<String, NetInterface>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetInterface {
    pub mac_address: String,
    pub subnets: Option<Vec<NetAddress>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetAddress {
    pub gateway: Option<IpAddr>,
    /// The interface's address with its subnet's prefix ("10.128.64.2/18").
    pub ipnet: String,
}

/// The status block of an attach: the interface, its address with the prefix, the gateway,
/// the DNS servers the host gives.
pub fn status_block(r: &pb::AttachWorkloadResponse) -> Result<StatusBlock, Error> {
    let bad = |what: &str, v: &str| Error::Internal(format!("the runner answered {what} {v:?}"));
    let ipnet = if r.ip.contains('/') {
        r.ip.clone()
    } else {
        format!("{}/{}", r.ip, r.prefix)
    };
    let (addr, prefix) = ipnet
        .split_once('/')
        .ok_or_else(|| bad("the address", &r.ip))?;
    addr.parse::<Ipv4Addr>()
        .map_err(|_| bad("the address", &r.ip))?;
    prefix
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| bad("the address", &r.ip))?;
    let gateway = if r.gateway.is_empty() {
        None
    } else {
        Some(
            r.gateway
                .parse::<IpAddr>()
                .map_err(|_| bad("the gateway", &r.gateway))?,
        )
    };
    let dns = r
        .dns
        .iter()
        .map(|d| d.parse::<IpAddr>().map_err(|_| bad("a DNS server", d)))
        .collect::<Result<Vec<_>, _>>()?;
    let iface = NetInterface {
        mac_address: r.mac.clone(),
        subnets: Some(vec![NetAddress { gateway, ipnet }]),
    };
    Ok(StatusBlock {
        dns_search_domains: Some(Vec::new()),
        dns_server_ips: Some(dns),
        interfaces: Some(BTreeMap::from([(r.ifname.clone(), iface)])),
    })
}

/// `create`: check the network as podman would store it and return it. Name, id and driver
/// are netavark's and kept; the options must be ones this plugin knows; Weir gives IPv4 only.
/// Subnets are left as given: addresses come from the runner's subnet in Weir's plan, which
/// the runner's local API does not publish (a subnet given here is not checked against it).
pub fn create(stdin: &[u8]) -> Result<Value, Error> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| Error::Input(format!("not a netavark network: {e}")))?;
    let n: Network = serde_json::from_value(v.clone())
        .map_err(|e| Error::Input(format!("not a netavark network: {e}")))?;
    origin(&n)?;
    if n.ipv6_enabled {
        return Err(field(
            "ipv6_enabled",
            "Weir gives containers IPv4 addresses only (create the network without --ipv6)",
        ));
    }
    net_conf(n.options.as_ref())?;
    Ok(v)
}

/// `info`.
pub fn info() -> Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "api_version": API_VERSION,
        "description": "Weir overlay network: attaches through the runner's local socket",
        "default_socket": DEFAULT_SOCKET,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec(extra: Value) -> PluginExec {
        let mut v = json!({
            "container_id": "752947ff91f961eb3cb47ffe9315016979f3ffbec09e4d96a4fae3fb03391697",
            "container_name": "testctr",
            "network": {
                "dns_enabled": false, "driver": "weir-netavark", "id": "2f25", "internal": false,
                "ipv6_enabled": false, "name": "weir",
                "options": {"socket": "/run/r.sock", "weir.network": "blue", "weir.label.team": "a"},
            },
            "network_options": {"aliases": ["752947ff91f9"], "interface_name": "eth0"},
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                if k == "network_options" {
                    for (k2, x2) in x.as_object().unwrap() {
                        o["network_options"][k2] = x2.clone();
                    }
                } else {
                    o.insert(k.clone(), x.clone());
                }
            }
        }
        PluginExec::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn setup_maps_onto_an_attach() {
        let e = exec(json!({"network_options": {
            "static_ips": ["10.128.64.9"],
            "options": {"weir.reservation": "tok", "weir.label.app": "web"},
        }}));
        let (conf, r) = attach_request(&e, "/run/netns/x", Some("env-tok".into())).unwrap();
        assert_eq!(conf.socket, "/run/r.sock");
        assert_eq!(r.origin, "netavark/weir");
        assert_eq!(r.workload_id, e.container_id);
        assert_eq!(r.netns, "/run/netns/x");
        assert_eq!(r.network, "blue");
        assert_eq!(r.ifname, "eth0");
        assert_eq!(r.requested_ip, "10.128.64.9");
        assert_eq!(r.reservation_token, "tok", "the container's option wins");
        assert_eq!(r.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(r.labels.get("app").map(String::as_str), Some("web"));
        let (_, r) = attach_request(&exec(json!({})), "/n", Some("env-tok".into())).unwrap();
        assert_eq!(r.reservation_token, "env-tok");
        assert!(r.requested_ip.is_empty());
    }

    #[test]
    fn refusals_name_the_field() {
        let msg = |e: PluginExec| attach_request(&e, "/n", None).unwrap_err().to_string();
        let m = msg(exec(
            json!({"network_options": {"static_mac": "aa:bb:cc:dd:ee:ff"}}),
        ));
        assert!(m.starts_with("network_options.static_mac:"), "{m}");
        let m = msg(exec(
            json!({"network_options": {"static_ips": ["10.0.0.1", "10.0.0.2"]}}),
        ));
        assert!(m.starts_with("network_options.static_ips:"), "{m}");
        let m = msg(exec(
            json!({"network_options": {"static_ips": ["fd00::1"]}}),
        ));
        assert!(m.contains("IPv4"), "{m}");
        let m = msg(exec(
            json!({"network_options": {"options": {"colour": "red"}}}),
        ));
        assert!(m.starts_with("network_options.options.colour:"), "{m}");
        let m = msg(exec(json!({"port_mappings": [{"container_port": 80}]})));
        assert!(m.starts_with("port_mappings:"), "{m}");
        let m = msg(exec(json!({"container_id": "a/b"})));
        assert!(m.starts_with("container_id:"), "{m}");
        let m = attach_request(&exec(json!({})), "relative", None)
            .unwrap_err()
            .to_string();
        assert!(m.contains("absolute"), "{m}");
        let bad = HashMap::from([("weir.netwrok".to_string(), "x".to_string())]);
        let m = net_conf(Some(&bad)).unwrap_err().to_string();
        assert!(m.starts_with("options.weir.netwrok:"), "{m}");
        let bad = HashMap::from([("socket".to_string(), "run/x".to_string())]);
        assert!(net_conf(Some(&bad)).is_err());
        let m = PluginExec::parse(br#"{"container_id": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(m.contains("network"), "{m}");
    }

    #[test]
    fn the_status_block_is_netavarks() {
        let r = pb::AttachWorkloadResponse {
            ip: "10.128.64.2/18".into(),
            gateway: "10.128.64.1".into(),
            ifname: "eth0".into(),
            mac: "02:57:00:00:00:01".into(),
            dns: vec!["10.0.0.53".into()],
            ..Default::default()
        };
        let s = serde_json::to_value(status_block(&r).unwrap()).unwrap();
        assert_eq!(
            s,
            json!({
                "dns_search_domains": [],
                "dns_server_ips": ["10.0.0.53"],
                "interfaces": {"eth0": {
                    "mac_address": "02:57:00:00:00:01",
                    "subnets": [{"gateway": "10.128.64.1", "ipnet": "10.128.64.2/18"}],
                }},
            })
        );
        let r = pb::AttachWorkloadResponse {
            ip: "10.128.64.2".into(),
            prefix: 18,
            ifname: "eth1".into(),
            ..Default::default()
        };
        let s = status_block(&r).unwrap();
        let i = &s.interfaces.unwrap()["eth1"];
        let a = &i.subnets.as_ref().unwrap()[0];
        assert_eq!((a.ipnet.as_str(), a.gateway), ("10.128.64.2/18", None));
    }

    #[test]
    fn create_keeps_the_network_and_checks_options() {
        let n = json!({"name": "weir", "id": "ab", "driver": "weir-netavark", "dns_enabled": true,
            "internal": false, "ipv6_enabled": false, "options": {"weir.network": "blue"},
            "subnets": [{"subnet": "10.128.64.0/18"}]});
        assert_eq!(create(n.to_string().as_bytes()).unwrap(), n);
        let mut v6 = n.clone();
        v6["ipv6_enabled"] = json!(true);
        let m = create(v6.to_string().as_bytes()).unwrap_err().to_string();
        assert!(m.starts_with("ipv6_enabled:"), "{m}");
        let mut bad = n.clone();
        bad["options"] = json!({"mtu": "1400"});
        let m = create(bad.to_string().as_bytes()).unwrap_err().to_string();
        assert!(m.starts_with("options.mtu:"), "{m}");
        assert!(create(b"[]").is_err());
    }
}
