//! The sections and keys of the configuration file (what `weir config show` prints), with
//! their built-in defaults. Every section refuses unknown keys.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::values::{ByteSize, Duration, IfName, Mtu, NetworkName};
use crate::plan::Plan;

/// The whole configuration of a `weir` process (host and runner read the same file format).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub overlay: OverlayConfig,
    pub host: HostConfig,
    pub runner: RunnerConfig,
    pub auth: AuthConfig,
    pub reservations: ReservationConfig,
    pub store: StoreConfig,
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
    /// The address plan `BASE/PREFIX/NODE_BITS/SUBNET_BITS`, or a flat `BASE/PREFIX`.
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

/// How the interfaces of `[[networks]]` are named (a network's explicit names win).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Naming {
    /// Derived from the network's name: `wh-NAME`, `vx-NAME-<id>`, `vx-NAME`, `wb-NAME`.
    #[default]
    Weir,
    /// KohakuRiver's several-network names, for every network of `[[networks]]` (`default`
    /// too): every network's host address on `overlay.host_device` (`kohaku-host`), host
    /// tunnels `vx<network index>_<id>` (index from 0 in configuration order), on runners
    /// `vxlan-NAME` and `kohaku-NAME` (cut to 15 bytes).
    Kohakuriver,
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

/// Where the host keeps its state: redb (one file in `host.state_dir`) or etcd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redb` (embedded; the default) or `etcd`.
    pub backend: StoreBackend,
    /// etcd client URLs (`http://…` or `https://…`).
    pub endpoints: Vec<String>,
    /// Every key starts with it: several clusters can share one etcd under different prefixes.
    pub prefix: String,
    /// etcd authentication: the user, and a file holding its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// TLS to etcd: the CA that signed its certificate, and a client certificate and key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// One request's deadline.
    pub timeout: Duration,
    /// How long a commit whose answer was lost is retried to learn whether it applied; past
    /// it, writes are refused until it is known.
    pub resolve_timeout: Duration,
    /// etcd's `--max-txn-ops` (a commit that needs more is refused whole).
    pub max_txn_ops: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Redb,
    Etcd,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Redb,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/weir/".into(),
            username: None,
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            timeout: Duration::from_secs(2),
            resolve_timeout: Duration::from_secs(30),
            max_txn_ops: 128,
        }
    }
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
    /// The address plan `BASE/PREFIX/NODE_BITS/SUBNET_BITS`, or a flat `BASE/PREFIX`.
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
    /// How the interfaces of `[[networks]]` are named: `weir` or `kohakuriver`.
    pub naming: Naming,
    /// Isolated mode only: VMs get their own NATed bridge `vm_bridge` with this subnet (the
    /// network `vm`; KohakuRiver's VM NAT bridge is `kohaku-br0` with 10.200.0.0/24). Unset:
    /// VMs share the isolated bridge with containers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_subnet: Option<Ipv4Net>,
    /// The VMs' bridge in isolated mode (with `vm_subnet`).
    pub vm_bridge: IfName,
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
            naming: Naming::Weir,
            vm_subnet: None,
            vm_bridge: IfName::new_static("kohaku-br0"),
        }
    }
}

/// The hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// gRPC listener for runners and schedulers.
    pub listen: SocketAddr,
    /// This host's name among several hosts on etcd (default: the machine's hostname). Each
    /// host's must be unique.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Several hosts: the URL others (runners, clients, the other hosts' answers) reach this
    /// host's gRPC API at (default: `http://` or `https://` + `reachable_address` + the port of
    /// `listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Several hosts: the TTL of this host's lease on etcd. The leader steps down when it
    /// could not renew it for three quarters of this; a standby takes over once it expired.
    pub lease_ttl: Duration,
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
    /// Serve plaintext gRPC on a `listen` address that is not loopback (tokens then cross the
    /// network in clear text; the host warns at start). Without it such a host refuses to
    /// start unless `tls_cert` and `tls_key` are set.
    pub allow_plaintext: bool,
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
            name: None,
            url: None,
            lease_ttl: Duration::from_secs(2),
            control_socket: Some(PathBuf::from("/run/weir/host.sock")),
            reachable_address: None,
            state_dir: PathBuf::from("/var/lib/weir/host"),
            heartbeat_timeout: Duration::from_secs(30),
            workload_grace: Duration::from_secs(30),
            command_timeout: Duration::from_secs(20),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            allow_plaintext: false,
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
    /// Several hosts (failover on etcd): every host's URL; the runner keeps its session with
    /// whichever leads. `host`, when set too, is tried first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
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
    /// Serve Docker's remote network driver on this unix socket (mode 0600). Docker finds it
    /// as `/run/docker/plugins/NAME.sock` (the driver is then `-d NAME`). Unset: no driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_socket: Option<PathBuf>,
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

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            name: None,
            host: None,
            hosts: Vec::new(),
            physical_ip: None,
            uplink: None,
            state_dir: PathBuf::from("/var/lib/weir/runner"),
            heartbeat_interval: Duration::from_secs(5),
            labels: BTreeMap::new(),
            join_token_file: None,
            socket: PathBuf::from("/run/weir/runner.sock"),
            docker_socket: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            netns_allow: crate::netns_path::DEFAULT_ALLOWED_PREFIXES
                .iter()
                .map(PathBuf::from)
                .collect(),
            netns_allow_pids: true,
        }
    }
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
