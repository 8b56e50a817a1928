//! Configuration: built-in defaults < TOML file < `WEIR_<SECTION>__<KEY>` environment variables.
//!
//! Every struct refuses unknown keys, and every value has a type that validates itself while it
//! is read, so an error always names the key, the source it came from and why it was refused.
//! The daemon never starts on a configuration it only half understood.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::plan::{self, Plan};

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/weir/weir.toml";
/// Environment variables of the form `WEIR_<SECTION>__<KEY>` override the file.
pub const ENV_PREFIX: &str = "WEIR_";
const DEFAULTS_NAME: &str = "built-in defaults";

/// The whole configuration of a `weir` process (host and runner read the same file format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub overlay: OverlayConfig,
    pub host: HostConfig,
    pub runner: RunnerConfig,
    pub auth: AuthConfig,
    pub reservations: ReservationConfig,
    pub policy: PolicyConfig,
    pub telemetry: TelemetryConfig,
    /// Several overlay networks (`[[networks]]`). Empty: `[overlay]` defines the one network
    /// `default`. When set, these are the networks, in order (the first is the primary one:
    /// it gives workloads their default route and serves calls that name no network).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkConfig>,
}

/// One overlay network of several. Its MTU and VXLAN port are `overlay.mtu` and
/// `overlay.vxlan_port`; its interface names derive from its name unless given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// 1 to 10 characters of `[a-z0-9]`, starting with a letter (names derive from it).
    pub name: NetworkName,
    /// The address plan `BASE/PREFIX/NODE_BITS/SUBNET_BITS`.
    pub subnet: Plan,
    /// VNI of runner r on this network is `vxlan_id_base + r`.
    pub vxlan_id_base: u32,
    /// Masquerade the network's traffic where it leaves (the runner's uplink for
    /// `runner-nat`, the host's uplink for `via-host`); false keeps the workload's own address.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Where traffic to the outside leaves: `runner-nat` (the runner's uplink) or `via-host`
    /// (steered to the host by source address; the host forwards it out of its uplink).
    #[serde(default)]
    pub egress: EgressMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_device: Option<IfName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_tunnel: Option<IfName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_bridge: Option<IfName>,
}

fn yes() -> bool {
    true
}

/// Where a network's traffic to the outside leaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    #[default]
    RunnerNat,
    ViaHost,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::RunnerNat => "runner-nat",
            EgressMode::ViaHost => "via-host",
        }
    }
}

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

/// The name of the network `[overlay]` defines, with KohakuRiver's interface names.
pub const DEFAULT_NETWORK: &str = "default";

/// A network as the configuration resolves it: settings and interface names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNetwork {
    pub name: String,
    /// `None`: isolated mode (only the default network, with `overlay.enabled = false`).
    pub plan: Option<Plan>,
    pub vxlan_id_base: u32,
    pub masquerade: bool,
    pub egress: EgressMode,
    pub names: NetworkNames,
}

/// The interfaces a network uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkNames {
    /// Host: the device holding the host's overlay address.
    pub host_device: String,
    /// Host: tunnel to runner r is `tunnel_prefix` + r in base 36.
    pub tunnel_prefix: String,
    /// Runner: the tunnel to the host.
    pub runner_tunnel: String,
    /// Runner: the workload bridge.
    pub runner_bridge: String,
    /// Runner: a direct tunnel to peer runner r is `direct_prefix` + r in base 36.
    pub direct_prefix: String,
}

impl NetworkNames {
    /// Names derived from a network's name: `wh-NAME`, `vx-NAME-<id>`, `vx-NAME`, `wb-NAME`,
    /// `vd-NAME-<id>`.
    pub fn derived(name: &str) -> Self {
        Self {
            host_device: format!("wh-{name}"),
            tunnel_prefix: format!("vx-{name}-"),
            runner_tunnel: format!("vx-{name}"),
            runner_bridge: format!("wb-{name}"),
            direct_prefix: format!("vd-{name}-"),
        }
    }
}

impl Config {
    /// The networks this configuration defines, in order (the first is the primary one).
    pub fn resolved_networks(&self) -> Vec<ResolvedNetwork> {
        let o = &self.overlay;
        if self.networks.is_empty() {
            let (plan, bridge) = if o.enabled {
                (Some(o.subnet), o.runner_bridge.to_string())
            } else {
                (None, o.isolated_bridge.to_string())
            };
            return vec![ResolvedNetwork {
                name: DEFAULT_NETWORK.into(),
                plan,
                vxlan_id_base: o.vxlan_id_base,
                masquerade: true,
                egress: EgressMode::RunnerNat,
                names: NetworkNames {
                    host_device: o.host_device.to_string(),
                    tunnel_prefix: o.tunnel_prefix.clone(),
                    runner_tunnel: o.runner_tunnel.to_string(),
                    runner_bridge: bridge,
                    direct_prefix: "vxd".into(),
                },
            }];
        }
        self.networks
            .iter()
            .map(|n| {
                let mut names = if n.name.as_str() == DEFAULT_NETWORK {
                    NetworkNames {
                        host_device: o.host_device.to_string(),
                        tunnel_prefix: o.tunnel_prefix.clone(),
                        runner_tunnel: o.runner_tunnel.to_string(),
                        runner_bridge: o.runner_bridge.to_string(),
                        direct_prefix: "vxd".into(),
                    }
                } else {
                    NetworkNames::derived(n.name.as_str())
                };
                if let Some(d) = &n.host_device {
                    names.host_device = d.to_string();
                }
                if let Some(p) = &n.tunnel_prefix {
                    names.tunnel_prefix = p.clone();
                }
                if let Some(t) = &n.runner_tunnel {
                    names.runner_tunnel = t.to_string();
                }
                if let Some(b) = &n.runner_bridge {
                    names.runner_bridge = b.to_string();
                }
                ResolvedNetwork {
                    name: n.name.to_string(),
                    plan: Some(n.subnet),
                    vxlan_id_base: n.vxlan_id_base,
                    masquerade: n.masquerade,
                    egress: n.egress,
                    names,
                }
            })
            .collect()
    }
}

/// Who may call the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Files holding one control token each (e.g. one per scheduler); `Control` calls need one.
    pub control_token_files: Vec<PathBuf>,
    /// The file holding the token runners join with (`Agent` calls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<PathBuf>,
    /// Serve without any token. The host refuses to start without token files otherwise.
    pub insecure: bool,
}

/// Address reservations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReservationConfig {
    /// The TTL of a reservation when the request gives none.
    pub default_ttl: Duration,
    /// The shortest and longest TTL a request may ask for.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for ReservationConfig {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(1800),
        }
    }
}

/// The default network: KohakuRiver's address plan, VXLAN settings and interface names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Build the VXLAN overlay; when false every runner gets an isolated NATed bridge.
    pub enabled: bool,
    /// The address plan `BASE/PREFIX/NODE_BITS/SUBNET_BITS`.
    pub subnet: Plan,
    /// VNI of runner r is `vxlan_id_base + r`.
    pub vxlan_id_base: u32,
    /// UDP destination port of the tunnels.
    pub vxlan_port: u16,
    /// MTU of tunnels, bridges and workload interfaces, or "auto" (underlay MTU − 50).
    pub mtu: Mtu,
    /// Per-runner subnet of isolated mode (every runner reuses it behind its own NAT).
    pub isolated_subnet: Ipv4Net,
    /// Host device that carries the host overlay IP.
    pub host_device: IfName,
    /// Host tunnels are named `tunnel_prefix` + runner id in base 36.
    pub tunnel_prefix: String,
    /// The runner's tunnel to the host.
    pub runner_tunnel: IfName,
    /// The runner's bridge for workloads in overlay mode.
    pub runner_bridge: IfName,
    /// The runner's bridge in isolated mode.
    pub isolated_bridge: IfName,
    /// DNS servers handed to VMs (cloud-init) at attach.
    pub dns: Vec<Ipv4Addr>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            subnet: Plan::new(Ipv4Addr::new(10, 128, 0, 0), 12, 6, 14)
                .expect("the default plan is valid"),
            vxlan_id_base: 100,
            vxlan_port: 4789,
            mtu: Mtu::Fixed(1450),
            isolated_subnet: Ipv4Net::new(Ipv4Addr::new(172, 30, 0, 0), 16)
                .expect("the default isolated subnet is valid"),
            host_device: IfName::new_static("kohaku-host"),
            tunnel_prefix: "vxkr".into(),
            runner_tunnel: IfName::new_static("vxlan0"),
            runner_bridge: IfName::new_static("kohaku-overlay"),
            isolated_bridge: IfName::new_static("kohakuriver-net"),
            dns: Vec::new(),
        }
    }
}

/// The hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// gRPC listener for runners and schedulers.
    pub listen: SocketAddr,
    /// A unix socket serving the same API to local tools (`weir status` on the host machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// The underlay address runners tunnel to. Required when the overlay is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachable_address: Option<Ipv4Addr>,
    /// Where allocations and workloads persist.
    pub state_dir: PathBuf,
    /// A runner without heartbeats for this long is inactive (its tunnel stays).
    pub heartbeat_timeout: Duration,
    /// A workload whose namespace has been gone (deleted, or replaced at its path) this long
    /// is released: detached with an event, its address freed.
    pub workload_grace: Duration,
    /// How long the host waits for a runner to carry out a command; past it the call fails
    /// and the runner never starts the command.
    pub command_timeout: Duration,
    /// TLS on `listen` (PEM certificate chain and key; both or neither).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// mTLS: clients on `listen` must present a certificate signed by this CA (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Calls served at once (every listener together); a call beyond waits up to 5 s for a
    /// slot, then gets RESOURCE_EXHAUSTED.
    pub max_concurrent_calls: u32,
    /// Calls without a valid token (health, reflection, wrong tokens) allowed per second per
    /// peer address (also the burst); beyond, RESOURCE_EXHAUSTED.
    pub unauthenticated_calls_per_second: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            control_socket: Some(PathBuf::from("/run/weir/host.sock")),
            reachable_address: None,
            state_dir: PathBuf::from("/var/lib/weir/host"),
            heartbeat_timeout: Duration::from_secs(30),
            workload_grace: Duration::from_secs(30),
            command_timeout: Duration::from_secs(20),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_concurrent_calls: 256,
            unauthenticated_calls_per_second: 20,
        }
    }
}

/// A runner agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// The runner's name in the cluster (default: the machine's hostname).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URL of the host's gRPC endpoint, e.g. `http://192.0.2.1:7700`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Underlay address of this runner (default: the source address the kernel picks toward the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physical_ip: Option<Ipv4Addr>,
    /// Interface NATed traffic leaves by (default: the interface of the default route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<IfName>,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// Labels sent at registration (policy plugins may use them).
    pub labels: BTreeMap<String, String>,
    /// The file holding the host's join token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<PathBuf>,
    /// The runner's local API socket (mode 0600), for local tools such as a CNI plugin.
    pub socket: PathBuf,
    /// The CA that signed the host's certificate (PEM), for an `https://` host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// The runner's client certificate and key (PEM), for a host that requires mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Directories a workload's network namespace may lie below (absolute, normalised).
    pub netns_allow: Vec<PathBuf>,
    /// Also accept a workload's namespace as `/proc/<pid>/ns/net`.
    pub netns_allow_pids: bool,
}

impl RunnerConfig {
    /// Which workload namespace paths the runner accepts.
    pub fn netns_policy(&self) -> crate::dataplane::netns::NetnsPolicy {
        crate::dataplane::netns::NetnsPolicy {
            allowed_prefixes: self.netns_allow.clone(),
            allow_proc_pids: self.netns_allow_pids,
        }
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            name: None,
            host: None,
            physical_ip: None,
            uplink: None,
            state_dir: PathBuf::from("/var/lib/weir/runner"),
            heartbeat_interval: Duration::from_secs(5),
            labels: BTreeMap::new(),
            join_token_file: None,
            socket: PathBuf::from("/run/weir/runner.sock"),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            netns_allow: crate::dataplane::netns::DEFAULT_ALLOWED_PREFIXES
                .iter()
                .map(PathBuf::from)
                .collect(),
            netns_allow_pids: true,
        }
    }
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
        } else if let Some(why) = crate::dataplane::netns::not_normalised(trimmed) {
            Some(why)
        } else if trimmed.starts_with("/proc") {
            Some(
                "it is below /proc (allow processes' namespaces with runner.netns_allow_pids)"
                    .into(),
            )
        } else if text.len() > crate::dataplane::netns::MAX_PATH_LEN {
            Some(format!(
                "it is longer than {} bytes",
                crate::dataplane::netns::MAX_PATH_LEN
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

/// Policy plugins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The plugins, each serving one or more hooks.
    pub plugins: Vec<PluginConfig>,
    /// The JSON-lines decision log (default: `host.state_dir/decisions.jsonl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_log: Option<PathBuf>,
    /// What the decision log records of each input: `digest` (SHA-256), `full`, or `off` (no log).
    pub audit: AuditLevel,
    /// How often plugin files are checked for changes (hot reload); `"0s"` is not allowed, set
    /// `watch = false` instead.
    pub watch_interval: Duration,
    pub watch: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            plugins: Vec::new(),
            decision_log: None,
            audit: AuditLevel::Digest,
            watch_interval: Duration::from_secs(1),
            watch: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    Off,
    Digest,
    Full,
}

/// One policy plugin: a WebAssembly component (`path`) or a gRPC service (`endpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `unix:///path` or `http://host:port` of a `weir.v1.PolicyPlugin` service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `allocator`, `firewall`, `router`.
    pub hooks: Vec<String>,
    #[serde(default)]
    pub mode: PluginMode,
    #[serde(default)]
    pub on_error: OnError,
    /// Wall-clock limit of one decision.
    #[serde(default = "default_deadline")]
    pub deadline: Duration,
    /// Memory cap of a WebAssembly instance, e.g. "16MiB".
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// The most items (rules, routes) one decision may return.
    #[serde(default = "default_max_output")]
    pub max_output: u32,
    /// The plugin's own settings, handed to its `configure`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_deadline() -> Duration {
    Duration::from_millis(50)
}
fn default_memory() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_max_output() -> u32 {
    10_000
}

/// `enforce`: the plugin decides. `monitor`: it runs beside the enforcing policy and its
/// differing decisions are logged, never applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    #[default]
    Enforce,
    Monitor,
}

impl PluginMode {
    /// The name used in the config, spans, the audit log and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginMode::Enforce => "enforce",
            PluginMode::Monitor => "monitor",
        }
    }
}

/// When a plugin fails: `fallback` to the built-in policy, or `deny` the operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Fallback,
    Deny,
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

/// Traces and metrics (logs are `WEIR_LOG` / `--log-format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector, e.g. `"http://127.0.0.1:4317"`. Unset: nothing is exported
    /// (trace context is still propagated and logged; Prometheus is still served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of traces and metrics (default `weir-host` / `weir-runner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0. A trace the caller sampled is always
    /// continued (parent-based), so a scheduler's sampling decision wins.
    pub sampling_ratio: f64,
    /// How often spans and metrics are pushed to the OTLP endpoint.
    pub export_interval: Duration,
    /// Serve Prometheus text at `http://<prometheus_listen>/metrics`.
    pub prometheus: bool,
    /// Where (default `127.0.0.1:9464` for the host, `127.0.0.1:9465` for a runner: loopback
    /// only, so metrics are not published by accident).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_listen: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sampling_ratio: 1.0,
            export_interval: Duration::from_secs(5),
            prometheus: true,
            prometheus_listen: None,
        }
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
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65_535;

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
    fn new_static(s: &'static str) -> Self {
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

/// A configuration problem: which key, from which source, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The effective configuration plus where each value came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    figment: Figment,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
}

impl LoadedConfig {
    /// Describe where `key` (e.g. `overlay.mtu`) got its value.
    pub fn source_of(&self, key: &str) -> String {
        describe_source(self.figment.find_metadata(key), key)
    }

    /// Whether `key` was set by the file or the environment (not left at its default).
    pub fn is_explicit(&self, key: &str) -> bool {
        self.figment
            .find_metadata(key)
            .is_some_and(|md| md.name != DEFAULTS_NAME)
    }

    /// A refusal of `key`'s value, naming its source.
    pub fn invalid(&self, key: &str, why: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid(vec![format!("{key} ({}): {why}", self.source_of(key))])
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The built-in defaults, as a figment provider with a recognisable name.
struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULTS_NAME)
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(Config::default()).data()
    }
}

/// Load the configuration. `file`: an explicit `--config`; when `None`, [`DEFAULT_CONFIG_PATH`]
/// is read if it exists.
pub fn load(file: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_from(file, Path::new(DEFAULT_CONFIG_PATH))
}

fn load_from(file: Option<&Path>, default_path: &Path) -> Result<LoadedConfig, ConfigError> {
    let path = match file {
        Some(p) => {
            if !p.is_file() {
                return Err(ConfigError::File {
                    path: p.to_path_buf(),
                    reason: "does not exist or is not a regular file".into(),
                });
            }
            Some(p.to_path_buf())
        }
        None => default_path.is_file().then(|| default_path.to_path_buf()),
    };
    let mut figment = Figment::from(Defaults);
    if let Some(p) = &path {
        // Read it ourselves so a missing or unreadable file is an error, never silently empty.
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::File {
                path: p.clone(),
                reason: format!("not valid TOML: {}", e.message()),
            });
        }
        figment = figment.merge(Toml::file_exact(p));
    }
    // Only section-qualified variables are configuration; WEIR_LOG, WEIR_HOST, … are not.
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    extract(figment, path)
}

/// Read the merged sources into a [`Config`] and check it.
fn extract(figment: Figment, file: Option<PathBuf>) -> Result<LoadedConfig, ConfigError> {
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(describe_errors(&figment, e)))?;
    let loaded = LoadedConfig {
        config,
        figment,
        file,
    };
    validate(&loaded)?;
    Ok(loaded)
}

/// Prefix lengths of an isolated-mode subnet: not all of IPv4 (/0 would swallow the runner's
/// default route), and big enough for the bridge (`.1`) and at least one workload (`.2` up to
/// broadcast − 2, so /29 gives four).
const ISOLATED_PREFIX: std::ops::RangeInclusive<u8> = 1..=29;

/// Checks that involve more than one key.
fn validate(loaded: &LoadedConfig) -> Result<(), ConfigError> {
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
            if !pa.clashes(*pb) {
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

fn describe_errors(figment: &Figment, err: figment::Error) -> Vec<String> {
    err.into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            if let figment::error::Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = path.join(".");
            // Prefer the provider that supplied this exact key; fall back to the error's tag.
            let md = figment.find_metadata(&key).or(e.metadata.as_ref());
            let why = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => format!(
                    "unknown key {field:?} (known keys here: {})",
                    expected.join(", ")
                ),
                other => other.to_string(),
            };
            if key.is_empty() {
                format!("configuration ({}): {why}", describe_source(md, &key))
            } else {
                format!("{key} ({}): {why}", describe_source(md, &key))
            }
        })
        .collect()
}

fn describe_source(md: Option<&Metadata>, key: &str) -> String {
    let Some(md) = md else {
        return "not set".into();
    };
    if md.name == DEFAULTS_NAME {
        return DEFAULTS_NAME.into();
    }
    if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
        return format!("file {}", path.display());
    }
    if md.name.contains("environment") {
        return format!("environment variable {}", env_var_for(key));
    }
    md.name.to_string()
}

/// The environment variable that supplied `key` (or a key below it), in its own spelling.
fn env_var_for(key: &str) -> String {
    let as_key = |var: &str| {
        var.strip_prefix(ENV_PREFIX)
            .map(|rest| rest.to_ascii_lowercase().replace("__", "."))
    };
    std::env::vars()
        .map(|(var, _)| var)
        .find(|var| as_key(var).is_some_and(|k| k == key || k.starts_with(&format!("{key}."))))
        .unwrap_or_else(|| {
            format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            )
        })
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in_jail(jail: &Jail, file: Option<&str>) -> Result<LoadedConfig, ConfigError> {
        let path = file.map(|f| jail.directory().join(f));
        load_from(path.as_deref(), &jail.directory().join("absent.toml"))
    }

    #[test]
    fn defaults_are_kohakuriver_compatible() {
        Jail::expect_with(|jail| {
            let c = load_in_jail(jail, None).unwrap();
            let o = &c.config.overlay;
            assert!(o.enabled);
            assert_eq!(o.subnet.to_string(), "10.128.0.0/12/6/14");
            assert_eq!(
                (o.vxlan_id_base, o.vxlan_port, o.mtu),
                (100, 4789, Mtu::Fixed(1450))
            );
            assert_eq!(o.host_device.as_str(), "kohaku-host");
            assert_eq!(o.runner_bridge.as_str(), "kohaku-overlay");
            assert_eq!(c.config.host.heartbeat_timeout, Duration::from_secs(30));
            assert_eq!(c.config.runner.heartbeat_interval, Duration::from_secs(5));
            assert_eq!(c.source_of("overlay.mtu"), "built-in defaults");
            assert!(!c.is_explicit("overlay.mtu"));
            Ok(())
        });
    }

    #[test]
    fn precedence_default_then_file_then_env() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "weir.toml",
                "[overlay]\nmtu = 1400\nvxlan_port = 4790\n[runner]\nheartbeat_interval = \"500ms\"\n",
            )?;
            jail.set_env("WEIR_OVERLAY__VXLAN_PORT", "4800");
            // Variables without a section are not configuration and must not be refused.
            jail.set_env("WEIR_LOG", "debug");
            let c = load_in_jail(jail, Some("weir.toml")).unwrap();
            assert_eq!(c.config.overlay.mtu, Mtu::Fixed(1400), "file beats default");
            assert_eq!(c.config.overlay.vxlan_port, 4800, "env beats file");
            assert_eq!(c.config.overlay.vxlan_id_base, 100, "default stays");
            assert_eq!(
                c.config.runner.heartbeat_interval,
                Duration::from_millis(500)
            );
            assert!(c.source_of("overlay.mtu").starts_with("file "));
            assert_eq!(
                c.source_of("overlay.vxlan_port"),
                "environment variable WEIR_OVERLAY__VXLAN_PORT"
            );
            assert!(c.is_explicit("overlay.mtu") && !c.is_explicit("overlay.subnet"));
            Ok(())
        });
    }

    #[test]
    fn env_alone_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.set_env("WEIR_OVERLAY__SUBNET", "10.0.0.0/22/2/8");
            jail.set_env("WEIR_OVERLAY__MTU", "auto");
            jail.set_env("WEIR_HOST__HEARTBEAT_TIMEOUT", "2m");
            let c = load_in_jail(jail, None).unwrap();
            assert_eq!(c.config.overlay.subnet.max_runners(), 3);
            assert_eq!(c.config.overlay.mtu, Mtu::Auto);
            assert_eq!(c.config.host.heartbeat_timeout, Duration::from_secs(120));
            Ok(())
        });
    }

    fn error_of(jail: &Jail, toml: &str) -> String {
        jail.create_file("bad.toml", toml).unwrap();
        load_in_jail(jail, Some("bad.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn runner_netns_allow_defaults_validates_and_becomes_a_policy() {
        Jail::expect_with(|jail| {
            let c = load_in_jail(jail, None).unwrap();
            assert_eq!(
                c.config.runner.netns_policy(),
                crate::dataplane::netns::NetnsPolicy::default()
            );
            jail.create_file(
                "ok.toml",
                "[runner]\nnetns_allow = [\"/srv/ns/\", \"/run/k8s\"]\nnetns_allow_pids = false\n",
            )?;
            let c = load_in_jail(jail, Some("ok.toml")).unwrap();
            let p = c.config.runner.netns_policy();
            assert_eq!(
                p.allowed_prefixes,
                vec![PathBuf::from("/srv/ns/"), PathBuf::from("/run/k8s")]
            );
            assert!(!p.allow_proc_pids);
            for (bad, why) in [
                ("run/netns", "not an absolute path"),
                ("/run/../etc", "\"..\" component"),
                ("/run//netns", "empty component"),
                ("/", "allow every path"),
                ("/proc/", "runner.netns_allow_pids"),
            ] {
                let e = error_of(jail, &format!("[runner]\nnetns_allow = [{bad:?}]\n"));
                assert!(
                    e.contains("runner.netns_allow") && e.contains(why),
                    "{bad}: {e}"
                );
                assert!(e.contains("bad.toml"), "{e}");
            }
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_with_key_and_source() {
        Jail::expect_with(|jail| {
            let e = error_of(jail, "[overlay]\nmtuu = 1400\n");
            assert!(e.contains("overlay.mtuu"), "{e}");
            assert!(e.contains("bad.toml"), "{e}");
            assert!(e.contains("unknown key"), "{e}");
            let e = error_of(jail, "[overlays]\nmtu = 1400\n");
            assert!(e.contains("overlays") && e.contains("unknown key"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn call_limits_default_and_are_bounded() {
        Jail::expect_with(|jail| {
            let c = load_in_jail(jail, None).unwrap();
            assert_eq!(c.config.host.max_concurrent_calls, 256);
            assert_eq!(c.config.host.unauthenticated_calls_per_second, 20);
            let e = error_of(jail, "[host]\nmax_concurrent_calls = 0\n");
            assert!(
                e.contains("host.max_concurrent_calls (file")
                    && e.contains("bad.toml")
                    && e.contains("0 is out of range (allowed: 1 to 65536)"),
                "{e}"
            );
            let e = error_of(jail, "[host]\nunauthenticated_calls_per_second = 0\n");
            assert!(
                e.contains("host.unauthenticated_calls_per_second") && e.contains("allowed: 1 to"),
                "{e}"
            );
            let e = error_of(jail, "[host]\nmax_concurrent_calls = -3\n");
            assert!(e.contains("host.max_concurrent_calls"), "{e}");
            jail.set_env("WEIR_HOST__UNAUTHENTICATED_CALLS_PER_SECOND", "5");
            let c = load_in_jail(jail, None).unwrap();
            assert_eq!(c.config.host.unauthenticated_calls_per_second, 5);
            Ok(())
        });
    }

    #[test]
    fn unknown_env_keys_are_refused_naming_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("WEIR_OVERLAY__NOPE", "1");
            let e = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(e.contains("overlay.nope"), "{e}");
            assert!(e.contains("WEIR_OVERLAY__NOPE"), "{e}");
            jail.clear_env();
            jail.set_env("WEIR_NOSECTION__KEY", "1");
            let e = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(
                e.starts_with("nosection (environment variable WEIR_NOSECTION__KEY)"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused_with_key_source_and_reason() {
        Jail::expect_with(|jail| {
            let e = error_of(jail, "[overlay]\nsubnet = \"10.128.0.0/12/6/15\"\n");
            assert!(
                e.contains("overlay.subnet") && e.contains("must be 32") && e.contains("bad.toml"),
                "{e}"
            );
            let e = error_of(jail, "[overlay]\nmtu = 100\n");
            assert!(
                e.contains("overlay.mtu") && e.contains("allowed: 576..=65535"),
                "{e}"
            );
            let e = error_of(jail, "[overlay]\nmtu = \"big\"\n");
            assert!(e.contains("overlay.mtu") && e.contains("\"big\""), "{e}");
            let e = error_of(jail, "[overlay]\nvxlan_port = 70000\n");
            assert!(e.contains("overlay.vxlan_port"), "{e}");
            let e = error_of(jail, "[runner]\nheartbeat_interval = \"soon\"\n");
            assert!(
                e.contains("runner.heartbeat_interval") && e.contains("500ms"),
                "{e}"
            );
            let e = error_of(jail, "[host]\nreachable_address = \"192.0.2\"\n");
            assert!(e.contains("host.reachable_address"), "{e}");
            let e = error_of(
                jail,
                "[overlay]\nrunner_bridge = \"a-very-long-bridge-name\"\n",
            );
            assert!(
                e.contains("overlay.runner_bridge") && e.contains("1 to 15 bytes"),
                "{e}"
            );
            let e = error_of(jail, "[overlay]\nenabled = \"yes please\"\n");
            assert!(e.contains("overlay.enabled"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("WEIR_OVERLAY__MTU", "huge");
            let e = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(
                e.contains("overlay.mtu") && e.contains("WEIR_OVERLAY__MTU"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn cross_field_checks() {
        Jail::expect_with(|jail| {
            let e = error_of(
                jail,
                "[overlay]\nsubnet = \"10.0.0.0/8/16/8\"\nvxlan_id_base = 16777000\n",
            );
            assert!(
                e.contains("overlay.vxlan_id_base") && e.contains("bad.toml"),
                "{e}"
            );
            let e = error_of(jail, "[overlay]\ntunnel_prefix = \"longtunnelpref\"\n");
            assert!(e.contains("overlay.tunnel_prefix"), "{e}");
            let e = error_of(jail, "[overlay]\nrunner_bridge = \"vxlan0\"\n");
            assert!(e.contains("already used"), "{e}");
            Ok(())
        });
    }

    const TWO_NETWORKS: &str = "[[networks]]\nname = \"private\"\nsubnet = \"10.128.0.0/12/6/14\"\nvxlan_id_base = 100\n[[networks]]\nname = \"public\"\nsubnet = \"198.51.100.0/22/2/8\"\nvxlan_id_base = 1000\nmasquerade = false\negress = \"via-host\"\n";

    #[test]
    fn several_networks_resolve_with_derived_names() {
        Jail::expect_with(|jail| {
            jail.create_file("nets.toml", TWO_NETWORKS)?;
            let c = load_in_jail(jail, Some("nets.toml")).unwrap().config;
            let nets = c.resolved_networks();
            assert_eq!(nets.len(), 2);
            assert_eq!(nets[0].name, "private");
            assert_eq!(nets[0].egress, EgressMode::RunnerNat);
            assert!(nets[0].masquerade);
            assert_eq!(nets[1].egress, EgressMode::ViaHost);
            assert!(!nets[1].masquerade);
            let n = &nets[1].names;
            assert_eq!(
                (
                    n.host_device.as_str(),
                    n.tunnel_prefix.as_str(),
                    n.runner_tunnel.as_str(),
                    n.runner_bridge.as_str(),
                    n.direct_prefix.as_str()
                ),
                (
                    "wh-public",
                    "vx-public-",
                    "vx-public",
                    "wb-public",
                    "vd-public-"
                )
            );
            // A network named "default" keeps KohakuRiver's names.
            jail.create_file(
                "default.toml",
                &TWO_NETWORKS.replace("\"private\"", "\"default\""),
            )?;
            let c = load_in_jail(jail, Some("default.toml")).unwrap().config;
            let d = &c.resolved_networks()[0].names;
            assert_eq!(
                (
                    d.host_device.as_str(),
                    d.tunnel_prefix.as_str(),
                    d.runner_tunnel.as_str(),
                    d.runner_bridge.as_str()
                ),
                ("kohaku-host", "vxkr", "vxlan0", "kohaku-overlay")
            );
            // Without [[networks]], [overlay] is the one network "default".
            let c = load_in_jail(jail, None).unwrap().config;
            assert_eq!(c.resolved_networks().len(), 1);
            assert_eq!(c.resolved_networks()[0].name, DEFAULT_NETWORK);
            Ok(())
        });
    }

    #[test]
    fn conflicting_networks_are_refused_naming_both() {
        Jail::expect_with(|jail| {
            let overlap = TWO_NETWORKS.replace("198.51.100.0/22/2/8", "10.130.0.0/16/4/12");
            let e = error_of(jail, &overlap);
            assert!(
                e.contains("\"private\" and \"public\"")
                    && e.contains("overlap")
                    && e.contains("10.128.0.0/12"),
                "{e}"
            );
            let vnis = TWO_NETWORKS.replace("vxlan_id_base = 1000", "vxlan_id_base = 150");
            let e = error_of(jail, &vnis);
            assert!(
                e.contains("\"private\" and \"public\"")
                    && e.contains("VNI ranges 101-163 and 151-153"),
                "{e}"
            );
            let names = format!("{TWO_NETWORKS}runner_bridge = \"wb-private\"\n");
            let e = error_of(jail, &names);
            assert!(
                e.contains("\"private\" and \"public\"") && e.contains("wb-private"),
                "{e}"
            );
            let twice = TWO_NETWORKS.replace("\"public\"", "\"private\"");
            let e = error_of(jail, &twice);
            assert!(e.contains("two networks are named \"private\""), "{e}");
            let e = error_of(jail, &TWO_NETWORKS.replace("\"public\"", "\"Public-1\""));
            assert!(e.contains("network name \"Public-1\""), "{e}");
            let long = TWO_NETWORKS
                .replace("\"public\"", "\"publicnet1\"")
                .replace("/22/2/8", "/16/8/8");
            let e = error_of(jail, &long.replace("198.51.100.0", "172.16.0.0"));
            assert!(
                e.contains("tunnel_prefix") && e.contains("shorter name"),
                "{e}"
            );
            let both = format!("[overlay]\nsubnet = \"10.0.0.0/16/4/12\"\n{TWO_NETWORKS}");
            let e = error_of(jail, &both);
            assert!(
                e.contains("overlay.subnet") && e.contains("[[networks]]"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn telemetry_settings_are_checked() {
        Jail::expect_with(|jail| {
            let e = error_of(jail, "[telemetry]\nsampling_ratio = 1.5\n");
            assert!(
                e.contains("telemetry.sampling_ratio") && e.contains("between 0.0"),
                "{e}"
            );
            let e = error_of(jail, "[telemetry]\notlp_endpoint = \"collector:4317\"\n");
            assert!(
                e.contains("telemetry.otlp_endpoint") && e.contains("http://"),
                "{e}"
            );
            let e = error_of(jail, "[telemetry]\nexport_interval = \"0s\"\n");
            assert!(e.contains("telemetry.export_interval"), "{e}");
            let e = error_of(jail, "[telemetry]\nprometheus_listen = \"localhost\"\n");
            assert!(e.contains("telemetry.prometheus_listen"), "{e}");
            jail.create_file(
                "ok.toml",
                "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.25\nprometheus_listen = \"127.0.0.1:19464\"\n",
            )?;
            let c = load_in_jail(jail, Some("ok.toml"))
                .unwrap()
                .config
                .telemetry;
            assert_eq!(c.sampling_ratio, 0.25);
            assert_eq!(
                c.prometheus_listen,
                Some("127.0.0.1:19464".parse().unwrap())
            );
            Ok(())
        });
    }

    /// Regressions found by `prop_config_isolated_subnets_leave_room_for_workloads`: a /30,
    /// /31 or /32 isolated subnet left no workload address, and 255.255.255.255/32 overflowed
    /// computing the bridge address.
    #[test]
    fn isolated_subnets_too_small_for_workloads_are_refused() {
        Jail::expect_with(|jail| {
            for cidr in [
                "0.0.0.0/30",
                "10.0.0.0/31",
                "255.255.255.255/32",
                "0.0.0.0/0",
            ] {
                let e = error_of(
                    jail,
                    &format!("[overlay]\nenabled = false\nisolated_subnet = \"{cidr}\"\n"),
                );
                assert!(
                    e.contains("overlay.isolated_subnet") && e.contains("/1 to /29"),
                    "{cidr}: {e}"
                );
            }
            jail.create_file(
                "ok.toml",
                "[overlay]\nenabled = false\nisolated_subnet = \"172.30.0.0/29\"\n",
            )?;
            assert!(load_in_jail(jail, Some("ok.toml")).is_ok());
            Ok(())
        });
    }

    /// Regression found by `prop_config_otlp_endpoints_name_a_host`: `http://:0` passed.
    #[test]
    fn otlp_endpoints_without_a_host_are_refused() {
        for url in ["http://:0", "http://:4317", "https://user@:4317/"] {
            assert_eq!(
                check_otlp_endpoint(url),
                Err(EndpointError::NoHost),
                "{url}"
            );
        }
        assert!(check_otlp_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_otlp_endpoint("https://collector.example:4317").is_ok());
    }

    #[test]
    fn missing_or_broken_files_are_errors() {
        Jail::expect_with(|jail| {
            let e = load_in_jail(jail, Some("nope.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("nope.toml") && e.contains("does not exist"),
                "{e}"
            );
            let e = error_of(jail, "[overlay\n");
            assert!(e.contains("not valid TOML"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn show_roundtrips() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "weir.toml",
                "[overlay]\nmtu = \"auto\"\n[runner]\nlabels = { rack = \"a\" }\n",
            )?;
            let c = load_in_jail(jail, Some("weir.toml")).unwrap();
            let shown = c.to_toml();
            jail.create_file("shown.toml", &shown)?;
            let again = load_in_jail(jail, Some("shown.toml")).unwrap();
            assert_eq!(again.config, c.config, "{shown}");
            assert!(shown.contains("mtu = \"auto\""), "{shown}");
            Ok(())
        });
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod prop_tests {
    use super::*;
    use crate::network::NetworkDef;
    use crate::prop_support::{config, edgy_u32, lit};
    use proptest::prelude::*;

    /// The loader on TOML text, without a file or the environment (other tests set `WEIR_*`
    /// variables in their jails; these properties must not see them).
    fn load_text(text: &str) -> Result<LoadedConfig, ConfigError> {
        extract(Figment::from(Defaults).merge(Toml::string(text)), None)
    }

    fn quoted(s: &str) -> String {
        toml::Value::String(s.to_string()).to_string()
    }

    fn err_text(r: Result<LoadedConfig, ConfigError>) -> Option<String> {
        r.err().map(|e| e.to_string())
    }

    /// Text shaped like a duration: numbers with units, spaces, signs, huge numbers.
    fn duration_like() -> impl Strategy<Value = String> {
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

    fn size_like() -> impl Strategy<Value = String> {
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

    /// A TOML value of any kind (what a user may write for a key).
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (-100i64..70_000).prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<String>().prop_map(|s| quoted(&s)),
            prop_oneof![
                Just("auto"),
                Just(" AUTO "),
                Just("Auto"),
                Just(" 1500"),
                Just("1e3")
            ]
            .prop_map(quoted),
            (-100i64..70_000).prop_map(|n| quoted(&format!(" {n} "))),
            Just("[1, 2]".to_string()),
            Just("{ a = 1 }".to_string()),
        ]
    }

    fn url_like() -> impl Strategy<Value = String> {
        let scheme = prop_oneof![
            lit("http://"),
            lit("https://"),
            lit("unix://"),
            lit("unix:"),
            lit("HTTP://"),
            lit("ftp://"),
            lit(""),
            "[a-z]{1,5}:/{0,3}",
        ];
        let host = prop_oneof![
            any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
            Just("[::1]".to_string()),
            Just("localhost".to_string()),
            Just(String::new()),
            "[a-z0-9.@:\\[\\]%-]{0,12}",
            ".{0,6}",
        ];
        let port = prop_oneof![
            Just(String::new()),
            any::<u16>().prop_map(|p| format!(":{p}")),
            "[:0-9a-z]{0,8}",
        ];
        let path = prop_oneof![Just(String::new()), "/[ -~]{0,10}", ".{0,5}"];
        (scheme, host, port, path).prop_map(|(s, h, p, x)| format!("{s}{h}{p}{x}"))
    }

    /// An address plan, valid or not.
    fn plan_spec() -> impl Strategy<Value = String> {
        prop_oneof![
            (edgy_u32(), 0u32..=33, 0u32..=18, 0u32..=32)
                .prop_map(|(b, p, n, s)| format!("{}/{p}/{n}/{s}", Ipv4Addr::from(b))),
            (1u32..=23, edgy_u32()).prop_flat_map(|(p, b)| {
                let lo = 1u32.max(2u32.saturating_sub(p));
                let hi = 16u32.min(24 - p);
                (lo..=hi).prop_map(move |n| format!("{}/{p}/{n}/{}", Ipv4Addr::from(b), 32 - p - n))
            }),
            ".{0,20}",
        ]
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
        fn prop_config_duration_keys_name_the_key(
            key in proptest::sample::select(vec![
                ("runner", "heartbeat_interval"),
                ("host", "heartbeat_timeout"),
                ("telemetry", "export_interval"),
                ("policy", "watch_interval"),
            ]),
            s in prop_oneof![duration_like(), any::<String>()],
        ) {
            let (section, field) = key;
            let got = load_text(&format!("[{section}]\n{field} = {}\n", quoted(&s)));
            match s.parse::<Duration>() {
                Ok(d) => {
                    let c = got.map_err(|e| TestCaseError::fail(e.to_string()))?.config;
                    let value = match section {
                        "runner" => c.runner.heartbeat_interval,
                        "host" => c.host.heartbeat_timeout,
                        "telemetry" => c.telemetry.export_interval,
                        _ => c.policy.watch_interval,
                    };
                    prop_assert_eq!(value, d);
                }
                Err(_) => {
                    let e = err_text(got).unwrap_or_default();
                    prop_assert!(e.contains(&format!("{section}.{field}")), "{}", e);
                }
            }
        }

        #[test]
        fn prop_config_reservation_ttls_are_ordered(
            ttls in proptest::collection::vec(1u64..4000, 3),
        ) {
            let text = format!(
                "[reservations]\nmin_ttl = \"{}s\"\ndefault_ttl = \"{}s\"\nmax_ttl = \"{}s\"\n",
                ttls[0], ttls[1], ttls[2]
            );
            let ordered = ttls[0] <= ttls[1] && ttls[1] <= ttls[2];
            match load_text(&text) {
                Ok(c) => {
                    prop_assert!(ordered);
                    let r = &c.config.reservations;
                    prop_assert!(r.min_ttl <= r.default_ttl && r.default_ttl <= r.max_ttl);
                }
                Err(e) => {
                    prop_assert!(!ordered, "{}", e);
                    prop_assert!(e.to_string().contains("reservations.default_ttl"), "{}", e);
                }
            }
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

        #[test]
        fn prop_config_mtu_accepts_only_its_range_or_auto(v in toml_value()) {
            match load_text(&format!("[overlay]\nmtu = {v}\n")) {
                Ok(c) => {
                    let mtu = c.config.overlay.mtu;
                    if let Mtu::Fixed(m) = mtu {
                        prop_assert!(MTU_RANGE.contains(&m), "{} from {}", m, v);
                    }
                    // What `weir config show` prints reads back the same.
                    let back = load_text(&c.to_toml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(back.config.overlay.mtu, mtu);
                }
                Err(e) => prop_assert!(e.to_string().contains("overlay.mtu"), "{}: {}", v, e),
            }
            if let Ok(n) = v.trim().parse::<i64>() {
                let ok = load_text(&format!("[overlay]\nmtu = {n}\n")).is_ok();
                prop_assert_eq!(ok, (576..=65_535).contains(&n), "mtu = {}", n);
            }
        }

        #[test]
        fn prop_config_interface_names_follow_the_kernel_rules(
            s in prop_oneof![".{0,20}", "[a-z0-9./: -]{0,17}", any::<String>()]
        ) {
            match s.parse::<IfName>() {
                Ok(n) => {
                    prop_assert!((1..=15).contains(&n.as_str().len()));
                    prop_assert!(n.as_str() != "." && n.as_str() != "..");
                    prop_assert!(!n.as_str().chars().any(|c| "/:\0".contains(c) || c.is_whitespace()));
                    prop_assert_eq!(n.to_string(), s.clone());
                }
                Err(e) => prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e),
            }
            if let Err(e) = load_text(&format!("[overlay]\nrunner_bridge = {}\n", quoted(&s))) {
                prop_assert!(e.to_string().contains("overlay.runner_bridge"), "{}", e);
            }
        }

        #[test]
        fn prop_config_network_names_give_usable_interface_names(
            name in prop_oneof!["[a-z][a-z0-9]{0,9}", "[a-zA-Z0-9_-]{0,12}", any::<String>()],
            plan in plan_spec(),
        ) {
            let shaped = (1..=10).contains(&name.len())
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            prop_assert_eq!(name.parse::<NetworkName>().is_ok(), shaped);
            let text = format!(
                "[[networks]]\nname = {}\nsubnet = {}\nvxlan_id_base = 100\n",
                quoted(&name),
                quoted(&plan)
            );
            match load_text(&text) {
                Ok(c) => {
                    prop_assert!(shaped);
                    let plan: Plan = plan.parse().map_err(|e: plan::PlanError| TestCaseError::fail(e.to_string()))?;
                    for n in c.config.resolved_networks() {
                        let longest = |p: &str| plan::tunnel_name(p, plan.max_runners());
                        for ifname in [
                            n.names.host_device.clone(), n.names.runner_tunnel.clone(),
                            n.names.runner_bridge.clone(), longest(&n.names.tunnel_prefix),
                            longest(&n.names.direct_prefix),
                        ] {
                            prop_assert!(check_ifname(&ifname).is_ok(), "{}", ifname);
                        }
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("networks"), "{}", e),
            }
        }

        #[test]
        fn prop_config_plan_key_is_checked_and_named(spec in plan_spec(), base in edgy_u32()) {
            let text = format!("[overlay]\nsubnet = {}\nvxlan_id_base = {base}\n", quoted(&spec));
            let parsed = spec.parse::<Plan>();
            match load_text(&text) {
                Ok(c) => {
                    let o = &c.config.overlay;
                    prop_assert_eq!(Ok(o.subnet), parsed);
                    prop_assert!(o.subnet.check_vni_base(o.vxlan_id_base).is_ok());
                    let back = load_text(&c.to_toml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(back.config, c.config);
                }
                Err(e) => {
                    let e = e.to_string();
                    if parsed.is_err() {
                        prop_assert!(e.contains("overlay.subnet"), "{}", e);
                    } else {
                        prop_assert!(e.contains("overlay."), "{}", e);
                    }
                }
            }
        }

        #[test]
        fn prop_config_isolated_subnets_leave_room_for_workloads(
            addr in edgy_u32(),
            prefix in prop_oneof![0u8..=32, 29u8..=32],
            junk in ".{0,12}",
            use_junk in proptest::bool::weighted(0.1),
        ) {
            let cidr = if use_junk { junk } else { format!("{}/{prefix}", Ipv4Addr::from(addr)) };
            let text = format!("[overlay]\nenabled = false\nisolated_subnet = {}\n", quoted(&cidr));
            match load_text(&text) {
                Ok(c) => {
                    let nets = NetworkDef::from_config(&c.config, 1450);
                    let sub = nets.first().and_then(|n| n.runner_subnet(None));
                    let sub = sub.ok_or_else(|| TestCaseError::fail("no isolated subnet"))?;
                    prop_assert!(sub.subnet.contains(&sub.gateway), "gateway {} outside {}", sub.gateway, sub.subnet);
                    let mut pool = crate::ipam::AddressPool::new(sub.subnet, &[]);
                    let first = pool.take_next().map_err(|e| TestCaseError::fail(format!("{cidr}: {e}")))?;
                    prop_assert!(sub.subnet.contains(&first) && first != sub.gateway);
                    prop_assert!(first != sub.subnet.network() && first != sub.subnet.broadcast());
                }
                Err(e) => prop_assert!(e.to_string().contains("overlay.isolated_subnet"), "{}: {}", cidr, e),
            }
        }

        #[test]
        fn prop_config_otlp_endpoints_name_a_host(url in prop_oneof![url_like(), any::<String>()]) {
            if check_otlp_endpoint(&url).is_ok() {
                prop_assert!(url.starts_with("http://") || url.starts_with("https://"));
                let uri = url.parse::<http::Uri>().map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(uri.host().is_some_and(|h| !h.is_empty()), "{:?} has no host", url);
            }
            let got = load_text(&format!("[telemetry]\notlp_endpoint = {}\n", quoted(&url)));
            if let Some(e) = err_text(got) {
                prop_assert!(e.contains("telemetry.otlp_endpoint"), "{}", e);
            }
        }

        #[test]
        fn prop_config_host_urls_never_panic(url in prop_oneof![url_like(), any::<String>()]) {
            // runner.host and a plugin's endpoint go through this check.
            let opts = crate::transport::ChannelOptions::default();
            match crate::transport::endpoint(&url, opts) {
                Ok(_) => prop_assert!(url.starts_with("http://") || url.starts_with("unix:")),
                Err(e) => prop_assert!(e.to_string().contains(&format!("{url:?}")), "{}", e),
            }
        }

        #[test]
        fn prop_config_scalar_keys_are_bounded_and_named(
            name in prop_oneof![".{0,10}", any::<String>(), "[ -~]{250,256}"],
            ratio in prop_oneof![any::<f64>(), -0.5f64..1.5],
            listen in prop_oneof![url_like(), any::<String>(), any::<std::net::SocketAddr>().prop_map(|a| a.to_string())],
        ) {
            let got = load_text(&format!("[runner]\nname = {}\n", quoted(&name)));
            let ok = !name.is_empty() && name.len() <= 253 && !name.chars().any(char::is_control);
            match got {
                Ok(c) => {
                    prop_assert!(ok);
                    prop_assert_eq!(c.config.runner.name.as_deref(), Some(name.as_str()));
                }
                Err(e) => {
                    prop_assert!(!ok);
                    prop_assert!(e.to_string().contains("runner.name"), "{}", e);
                }
            }
            let got = load_text(&format!("[telemetry]\nsampling_ratio = {}\n", toml::Value::Float(ratio)));
            match got {
                Ok(c) => prop_assert!((0.0..=1.0).contains(&c.config.telemetry.sampling_ratio)),
                Err(e) => {
                    prop_assert!(!(0.0..=1.0).contains(&ratio));
                    prop_assert!(e.to_string().contains("telemetry.sampling_ratio"), "{}", e);
                }
            }
            match load_text(&format!("[host]\nlisten = {}\n", quoted(&listen))) {
                Ok(c) => prop_assert_eq!(Ok(c.config.host.listen), listen.parse::<SocketAddr>()),
                Err(e) => prop_assert!(e.to_string().contains("host.listen"), "{}", e),
            }
        }

        #[test]
        fn prop_config_plugin_entries_are_checked_and_named(
            name in prop_oneof!["[a-zA-Z0-9_-]{1,63}", ".{0,70}"],
            hooks in proptest::collection::vec(
                prop_oneof![Just("allocator".to_string()), Just("firewall".to_string()),
                            Just("router".to_string()), ".{0,8}"], 0..4),
            memory in prop_oneof![size_like(), any::<String>()],
            max_output in prop_oneof![Just(0i64), any::<i64>(), 0i64..20_000],
        ) {
            let hook_list = hooks.iter().map(|h| quoted(h)).collect::<Vec<_>>().join(", ");
            let text = format!(
                "[[policy.plugins]]\nname = {}\npath = \"/p.wasm\"\nhooks = [{hook_list}]\nmode = \"monitor\"\nmemory = {}\nmax_output = {max_output}\n",
                quoted(&name), quoted(&memory)
            );
            match load_text(&text) {
                Ok(c) => {
                    let p = &c.config.policy.plugins[0];
                    prop_assert!(!p.name.is_empty() && p.name.len() <= 63);
                    prop_assert!(p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
                    prop_assert!(!p.hooks.is_empty());
                    prop_assert!(p.hooks.iter().all(|h| Hook::parse(h).is_some()), "{:?}", p.hooks);
                    prop_assert!(p.max_output >= 1);
                    prop_assert_eq!(Ok(p.memory), memory.parse::<ByteSize>());
                }
                Err(e) => prop_assert!(e.to_string().contains("policy"), "{}", e),
            }
        }
    }

    use crate::policy::types::Hook;
}
