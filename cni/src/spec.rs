//! The CNI specification's side (1.1, answering 0.3.0 to 1.1.0): the environment and network
//! configuration a runtime hands the plugin, the result and error objects it prints.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

/// The versions this plugin answers in (each in its own result format).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version of a reply when the request names none (VERSION without a config).
pub const NEWEST: &str = "1.1.0";

/// Where the runner's local socket is unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/weir/runner.sock";

/// The spec's well-known error codes (CNI 1.1, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (100 and above): Weir refused the request; `details` says why.
    pub const REFUSED: u32 = 100;
}

/// An error as the spec's error object (printed on stdout, exit status 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

pub type Result<T> = std::result::Result<T, CniError>;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND: {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
                    ),
                ));
            }
        })
    }
}

/// The runtime's environment, as the spec names it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as `KEY=VALUE` pairs.
    pub args: Vec<(String, String)>,
}

impl Env {
    /// Read from `var` (the process environment in the binary).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let args = match var("CNI_ARGS") {
            Some(a) => parse_cni_args(&a)?,
            None => Vec::new(),
        };
        Ok(Self {
            container_id: var("CNI_CONTAINERID").unwrap_or_default(),
            netns: var("CNI_NETNS").unwrap_or_default(),
            ifname: var("CNI_IFNAME").unwrap_or_default(),
            args,
        })
    }

    /// A variable the command needs.
    pub fn require<'a>(&self, name: &str, value: &'a str) -> Result<&'a str> {
        if value.is_empty() {
            Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{name}: must be set for this command"),
            ))
        } else {
            Ok(value)
        }
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::new(
                        code::INVALID_ENVIRONMENT,
                        format!("CNI_ARGS: {p:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// The network configuration on stdin, as this plugin reads it.
#[derive(Debug, Clone, Default)]
pub struct NetConf {
    pub cni_version: String,
    /// The CNI network's name.
    pub name: String,
    /// The runner's local socket.
    pub socket: String,
    /// The Weir network (empty: the primary one).
    pub network: String,
    pub labels: BTreeMap<String, String>,
    /// Addresses asked for (`runtimeConfig.ips`, `args.cni.ips`), with or without a prefix.
    pub ips: Vec<String>,
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep, as (container id, interface).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("the network configuration on stdin is not JSON: {e}"),
            )
        })?;
        if !raw.is_object() {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                "the network configuration on stdin must be a JSON object",
            ));
        }
        let text = |key: &str| -> Result<String> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(invalid(format!("{key}: must be a string"))),
            }
        };
        let cni_version = text("cniVersion")?;
        let name = text("name")?;
        let mut socket = text("socket")?;
        if socket.is_empty() {
            socket = DEFAULT_SOCKET.into();
        }
        let network = text("network")?;
        let mut labels = BTreeMap::new();
        match raw.get("labels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let v = v
                        .as_str()
                        .ok_or_else(|| invalid(format!("labels.{k}: must be a string")))?;
                    labels.insert(k.clone(), v.to_string());
                }
            }
            Some(_) => return Err(invalid("labels: must be an object of strings")),
        }
        let args_cni = raw.get("args").and_then(|a| a.get("cni"));
        // The "args" convention: labels as [{key, value}], addresses as ["10.0.0.5/24"].
        if let Some(list) = args_cni.and_then(|c| c.get("labels")) {
            let list = list
                .as_array()
                .ok_or_else(|| invalid("args.cni.labels: must be a list of {key, value}"))?;
            for l in list {
                match (
                    l.get("key").and_then(Value::as_str),
                    l.get("value").and_then(Value::as_str),
                ) {
                    (Some(k), Some(v)) => {
                        labels.insert(k.to_string(), v.to_string());
                    }
                    _ => return Err(invalid("args.cni.labels: each must be {key, value}")),
                }
            }
        }
        let mut ips = Vec::new();
        for (field, list) in [
            (
                "runtimeConfig.ips",
                raw.get("runtimeConfig").and_then(|r| r.get("ips")),
            ),
            ("args.cni.ips", args_cni.and_then(|c| c.get("ips"))),
        ] {
            let Some(list) = list else { continue };
            let list = list
                .as_array()
                .ok_or_else(|| invalid(format!("{field}: must be a list of addresses")))?;
            for ip in list {
                ips.push(
                    ip.as_str()
                        .ok_or_else(|| invalid(format!("{field}: must be a list of strings")))?
                        .to_string(),
                );
            }
        }
        let prev_result = raw.get("prevResult").filter(|v| !v.is_null()).cloned();
        // libcni sends the older key as well; they carry the same list.
        let valid = raw
            .get("cni.dev/valid-attachments")
            .or_else(|| raw.get("cni.dev/attachments"));
        let valid_attachments = match valid {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(
                list.iter()
                    .map(|a| {
                        match (
                            a.get("containerID").and_then(Value::as_str),
                            a.get("ifname").and_then(Value::as_str),
                        ) {
                            (Some(c), Some(i)) => Ok((c.to_string(), i.to_string())),
                            _ => Err(invalid(
                                "cni.dev/valid-attachments: each must be {containerID, ifname}",
                            )),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(_) => return Err(invalid("cni.dev/valid-attachments: must be a list")),
        };
        Ok(Self {
            cni_version,
            name,
            socket,
            network,
            labels,
            ips,
            prev_result,
            valid_attachments,
        })
    }

    /// The version to answer in: the configuration's, which must be one this plugin speaks.
    pub fn version(&self) -> Result<&str> {
        if self.cni_version.is_empty() {
            return Err(invalid("cniVersion: must be set"));
        }
        if SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            Ok(&self.cni_version)
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion: {} is not supported (this plugin speaks {})",
                    self.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ))
        }
    }

    /// The CNI network's name, as a workload's origin names it (`cni/NAME`).
    pub fn origin(&self) -> Result<String> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(format!("cni/{}", self.name))
        } else {
            Err(invalid(format!(
                "name: {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                self.name
            )))
        }
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_NETWORK_CONFIG, msg)
}

/// What an ADD gives the container, before it is written in a version's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host_ifname: String,
    pub host_mac: String,
    pub ifname: String,
    pub mac: String,
    pub sandbox: String,
    /// With prefix, e.g. `10.128.64.2/18`.
    pub address: String,
    pub gateway: String,
    pub mtu: u32,
    pub default_route: bool,
    pub dns: Vec<String>,
}

#[derive(Serialize)]
struct Interface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    mac: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
}

/// The ADD result in `version`'s format (0.3.x/0.4.0 give each IP a "version"; 1.1 adds the
/// interface's MTU).
pub fn result(version: &str, a: &Attached) -> Value {
    let pre_1 = version.starts_with("0.");
    let with_mtu = version == "1.1.0";
    let interfaces = [
        Interface {
            name: &a.host_ifname,
            mac: &a.host_mac,
            sandbox: None,
            mtu: with_mtu.then_some(a.mtu),
        },
        Interface {
            name: &a.ifname,
            mac: &a.mac,
            sandbox: Some(&a.sandbox),
            mtu: with_mtu.then_some(a.mtu),
        },
    ];
    let mut ip = json!({ "address": a.address, "gateway": a.gateway, "interface": 1 });
    if pre_1 {
        ip["version"] = Value::String("4".into());
    }
    let routes: Vec<Value> = if a.default_route {
        vec![json!({ "dst": "0.0.0.0/0", "gw": a.gateway })]
    } else {
        Vec::new()
    };
    let mut out = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": [ip],
        "routes": routes,
        "dns": {},
    });
    if !a.dns.is_empty() {
        out["dns"] = json!({ "nameservers": a.dns });
    }
    out
}

/// The addresses (without prefix) a previous result gives `ifname`'s interface.
pub fn prev_addresses(prev: &Value, ifname: &str) -> Vec<String> {
    let Some(ifaces) = prev.get("interfaces").and_then(Value::as_array) else {
        return Vec::new();
    };
    let ours: Vec<u64> = ifaces
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            i.get("name").and_then(Value::as_str) == Some(ifname)
                && i.get("sandbox").and_then(Value::as_str).is_some()
        })
        .map(|(k, _)| k as u64)
        .collect();
    prev.get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter(|ip| {
                    ip.get("interface")
                        .and_then(Value::as_u64)
                        .is_some_and(|k| ours.contains(&k))
                })
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            host_ifname: "wk0123abcd".into(),
            host_mac: "02:77:01:02:03:04".into(),
            ifname: "eth0".into(),
            mac: "02:57:01:02:03:04".into(),
            sandbox: "/run/netns/c1".into(),
            address: "10.128.64.2/18".into(),
            gateway: "10.128.64.1".into(),
            mtu: 1450,
            default_route: true,
            dns: vec!["192.0.2.53".into()],
        }
    }

    #[test]
    fn results_follow_the_version_asked() {
        let old = result("0.4.0", &attached());
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][1].get("mtu").is_none());
        let v1 = result("1.0.0", &attached());
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        let v11 = result("1.1.0", &attached());
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["interfaces"][1]["sandbox"], "/run/netns/c1");
        assert_eq!(v11["interfaces"][1]["mac"], "02:57:01:02:03:04");
        assert_eq!(v11["routes"][0]["gw"], "10.128.64.1");
        assert_eq!(v11["dns"]["nameservers"][0], "192.0.2.53");
        assert_eq!(prev_addresses(&v11, "eth0"), vec!["10.128.64.2"]);
        assert!(prev_addresses(&v11, "eth1").is_empty());
    }

    #[test]
    fn configuration_fields_are_read_and_bad_ones_named() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"weir","type":"weir-cni","network":"blue",
                "labels":{"team":"a"},"runtimeConfig":{"ips":["10.1.0.9/18"]},
                "args":{"cni":{"labels":[{"key":"app","value":"db"}]}},
                "cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.version().unwrap(), "1.0.0");
        assert_eq!(c.origin().unwrap(), "cni/weir");
        assert_eq!(c.socket, DEFAULT_SOCKET);
        assert_eq!(c.network, "blue");
        assert_eq!(c.labels.get("app").map(String::as_str), Some("db"));
        assert_eq!(c.ips, vec!["10.1.0.9/18"]);
        assert_eq!(
            c.valid_attachments,
            Some(vec![("c1".to_string(), "eth0".to_string())])
        );
        let e = NetConf::parse(br#"{"cniVersion":"2.0.0","name":"w"}"#)
            .unwrap()
            .version()
            .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"w","labels":[1]}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
        assert!(e.msg.starts_with("labels:"), "{}", e.msg);
        assert_eq!(
            NetConf::parse(b"{").unwrap_err().code,
            code::DECODING_FAILURE
        );
        let bad = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"a b"}"#).unwrap();
        assert_eq!(bad.origin().unwrap_err().code, code::INVALID_NETWORK_CONFIG);
    }

    #[test]
    fn cni_args_are_pairs() {
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;IP=10.0.0.5").unwrap(),
            vec![
                ("IgnoreUnknown".to_string(), "1".to_string()),
                ("IP".to_string(), "10.0.0.5".to_string())
            ]
        );
        assert_eq!(
            parse_cni_args("IP").unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
        assert!(Command::parse("ADD").is_ok());
        assert_eq!(
            Command::parse("add").unwrap_err().code,
            code::INVALID_ENVIRONMENT
        );
    }
}
