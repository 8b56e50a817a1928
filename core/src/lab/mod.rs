//! The lab: a whole cluster on one machine, in network namespaces, running the real daemons.
//!
//! ```text
//!   weir-L-wan  eth0 203.0.113.10/24 (the "internet")
//!        |
//!   weir-L-lan  router: br0 192.0.2.254/24 (the underlay switch) + wan0 203.0.113.1/24
//!        |---- weir-L-host  eth0 192.0.2.1    `weir host`
//!        |---- weir-L-r1    eth0 192.0.2.11   `weir runner`   workloads weir-L-r1-w1, -w2 …
//!        `---- weir-L-r2    eth0 192.0.2.12   `weir runner`
//! ```
//!
//! Every object lives inside the lab's own namespaces (names start with `weir-<lab>-`), so labs
//! never collide with each other or touch the machine's own interfaces. `down` finds the lab's
//! processes by the namespaces they run in, so it cleans up even after a crash.

pub mod etcd;
mod process;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ipnet::Ipv4Net;

pub use process::{Daemon, run_in_namespace};

use crate::dataplane::netlink::Netlink;
use crate::dataplane::netns;

/// Where labs keep configs, logs, sockets and state.
pub const LAB_RUN_DIR: &str = "/run/weir-lab";
/// The underlay and the wan.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const WAN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// `RTPROT_STATIC`.
const STATIC_ROUTE: u8 = 4;
/// The host's gRPC port inside the lab.
pub const HOST_PORT: u16 = 7700;
/// How long the lab waits for a daemon to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The underlay address of host `i` (1-based; host 1 is [`HOST_IP`]).
pub fn host_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i as u8)
}

/// The lab member (namespace) of host `i`: `host`, then `host2`, `host3` …
pub fn host_member(i: u32) -> String {
    if i == 1 {
        "host".into()
    } else {
        format!("host{i}")
    }
}

/// The underlay address of runner `i` (1-based).
pub fn runner_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Short name; namespaces are `weir-<name>-…`.
    pub name: String,
    pub runners: u32,
    /// Workloads created and attached per runner.
    pub workloads_per_runner: u32,
    /// The `weir` binary to run as host and runners.
    pub weir_bin: PathBuf,
    /// Lines of the host's `[overlay]` section (e.g. `subnet = "10.0.0.0/22/2/8"`).
    pub overlay: String,
    /// Extra lines of the host's `[host]` section (e.g. `heartbeat_timeout = "3s"`); with
    /// several hosts, `{member}` in it becomes each host's member name (`host`, `host2` …),
    /// for what each host has of its own (its TLS certificate).
    pub host_keys: String,
    /// Extra lines of every runner's `[runner]` section.
    pub runner_keys: String,
    /// Extra sections of the host's configuration (e.g. `[reservations]`).
    pub host_extra: String,
    /// Extra sections of every runner's configuration (e.g. `[telemetry]`).
    pub runner_extra: String,
    /// Each runner serves Docker's network driver as `weir` in [`Lab::docker_plugins`].
    pub docker: bool,
    /// The URL runners reach the host at.
    pub host_url: String,
    /// How long to wait for a daemon's `READY=1`.
    pub ready_timeout: Duration,
    /// Let the host serve plaintext on its namespace address (`host.allow_plaintext`; a host
    /// with `host.tls_cert`/`host.tls_key` in `host_keys` serves TLS whatever this says).
    pub plaintext: bool,
    /// Keep the daemons alive when the lab process exits (`weir lab up`); otherwise they die
    /// with it.
    pub detached: bool,
    /// A configuration merged over the daemons' generated ones (`weir lab up --config`): the
    /// host takes every section but `[runner]`, each runner `[runner]` and `[telemetry]`.
    /// It must not set [`LAB_KEYS`] (see [`lab_keys_in`]).
    pub daemon_config: toml::Table,
    /// Keep the host's state on etcd: a cluster of this many members inside the host's
    /// namespace (on its loopback), started with the host and stopped with the lab. 0: redb.
    /// With several `hosts`, the members run in the lan namespace on [`ROUTER_IP`].
    pub etcd_members: usize,
    /// How many hosts (several need `etcd_members`): host `i` is [`host_member`]`(i)` at
    /// [`host_ip`]`(i)`, named `h<i>`; every runner knows them all.
    pub hosts: u32,
}

/// The keys the lab sets itself in its daemons' configurations (addresses, sockets, state,
/// tokens, the runners' names and their way to the host); a `daemon_config` may set any other.
pub const LAB_KEYS: &[&str] = &[
    "host.listen",
    "host.allow_plaintext",
    "host.control_socket",
    "host.reachable_address",
    "host.state_dir",
    "host.tls_cert",
    "host.tls_key",
    "host.tls_client_ca",
    "auth.control_token_files",
    "auth.join_token_file",
    "auth.insecure",
    "runner.name",
    "runner.host",
    "runner.state_dir",
    "runner.join_token_file",
    "runner.socket",
    "runner.docker_socket",
    "runner.tls_ca",
    "runner.tls_cert",
    "runner.tls_key",
];

/// The [`LAB_KEYS`] a configuration sets.
pub fn lab_keys_in(config: &toml::Table) -> Vec<&'static str> {
    LAB_KEYS
        .iter()
        .copied()
        .filter(|k| {
            let (section, key) = k.split_once('.').unwrap_or((k, ""));
            config
                .get(section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(key))
        })
        .collect()
}

/// Merge `over` into `base`: tables key by key, any other value replaced.
fn merge_tables(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl LabSpec {
    pub fn new(name: &str, weir_bin: PathBuf) -> Self {
        Self {
            name: name.to_string(),
            runners: 2,
            workloads_per_runner: 2,
            weir_bin,
            overlay: String::new(),
            host_keys: String::new(),
            runner_keys: String::new(),
            host_extra: String::new(),
            runner_extra: String::new(),
            docker: false,
            host_url: format!("http://{HOST_IP}:{HOST_PORT}"),
            ready_timeout: READY_TIMEOUT,
            plaintext: true,
            detached: false,
            daemon_config: toml::Table::new(),
            etcd_members: 0,
            hosts: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab {lab}: {what}: {reason}")]
    Step {
        lab: String,
        what: String,
        reason: String,
    },
}

type Result<T> = std::result::Result<T, LabError>;

/// A running lab. Dropping it tears everything down unless it was [`Lab::keep`]-ed.
pub struct Lab {
    pub spec: LabSpec,
    pub dir: PathBuf,
    pub host: Option<Daemon>,
    /// Hosts 2, 3 … (with `spec.hosts`).
    pub other_hosts: BTreeMap<u32, Daemon>,
    pub runners: BTreeMap<u32, Daemon>,
    /// Workload namespaces by (runner, index).
    pub workloads: BTreeMap<(u32, u32), String>,
    /// Extra environment of a member's daemon at its next start (e.g. `WEIR_FAILPOINTS` for
    /// `host` or `r1`).
    pub daemon_env: BTreeMap<String, Vec<(String, String)>>,
    /// The host's etcd (with `spec.etcd_members`).
    pub etcd: Option<etcd::EtcdCluster>,
    keep: bool,
}

impl Lab {
    fn step<T, E: std::fmt::Display>(&self, what: &str, r: std::result::Result<T, E>) -> Result<T> {
        r.map_err(|e| LabError::Step {
            lab: self.spec.name.clone(),
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// The namespace name of a lab member (`host`, `lan`, `wan`, `r1`, `r1-w2`).
    pub fn ns_name(&self, member: &str) -> String {
        ns_name(&self.spec.name, member)
    }

    /// The path of a lab member's namespace.
    pub fn ns(&self, member: &str) -> PathBuf {
        netns::named_path(&self.ns_name(member))
    }

    /// The host's control API, reachable from the machine's own namespace (a unix socket).
    pub fn control_url(&self) -> String {
        format!("unix://{}", self.dir.join("host.sock").display())
    }

    /// Build the topology and start the host and the runners; wait until each is ready.
    pub async fn up(spec: LabSpec) -> Result<Lab> {
        let mut lab = Lab::underlay(spec).await?;
        lab.start_host().await?;
        for i in 1..=lab.spec.runners {
            lab.add_runner(i).await?;
        }
        for i in 1..=lab.spec.runners {
            for w in 1..=lab.spec.workloads_per_runner {
                lab.add_workload(i, w).await?;
            }
        }
        Ok(lab)
    }

    /// Build only the underlay (lan, wan and the host's namespace), start nothing.
    pub async fn underlay(spec: LabSpec) -> Result<Lab> {
        let dir = Path::new(LAB_RUN_DIR).join(&spec.name);
        let mut lab = Lab {
            spec,
            dir,
            host: None,
            other_hosts: BTreeMap::new(),
            runners: BTreeMap::new(),
            workloads: BTreeMap::new(),
            daemon_env: BTreeMap::new(),
            etcd: None,
            keep: false,
        };
        // A half-built lab is torn down by Drop when any step fails.
        if !netns::list(&format!("weir-{}-", lab.spec.name))
            .unwrap_or_default()
            .is_empty()
        {
            return Err(LabError::Step {
                lab: lab.spec.name.clone(),
                what: "create".into(),
                reason: format!(
                    "it already exists; run `weir lab down --name {}` first",
                    lab.spec.name
                ),
            });
        }
        let r = std::fs::create_dir_all(&lab.dir);
        lab.step("create lab directory", r)?;
        lab.write_tokens()?;
        lab.build_underlay().await?;
        Ok(lab)
    }

    async fn build_underlay(&mut self) -> Result<()> {
        let hosts: Vec<String> = (1..=self.spec.hosts.max(1)).map(host_member).collect();
        for member in ["lan", "wan"]
            .into_iter()
            .chain(hosts.iter().map(String::as_str))
        {
            let r = netns::create(&self.ns_name(member));
            self.step(&format!("create namespace {member}"), r)?;
        }
        let lan = self.step("open lan", Netlink::in_namespace(&self.ns("lan")))?;
        let r = lan.add_bridge("br0", 1500).await;
        let br = self.step("create the underlay switch", r)?;
        // A MAC of its own: a bridge otherwise takes its lowest port's, so plugging a runner in
        // could change the router's MAC under every member's ARP cache (192.0.2.254 — the
        // gateway, etcd, a collector — unreachable for seconds).
        let r = lan
            .set_mac(br.index, [0x02, 0x57, 0x4c, 0x41, 0x42, 0xfe])
            .await;
        self.step("fix the underlay switch's MAC", r)?;
        let r = lan
            .add_addr(br.index, Ipv4Net::new(ROUTER_IP, 24).expect("valid"))
            .await;
        self.step("address the underlay switch", r)?;
        let r = netns::run_in(&self.ns("lan"), crate::dataplane::sysctl::enable_ip_forward);
        self.step(
            "enable forwarding on the router",
            r.map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
        )?;
        // The wan: a routed link from the router, with a default route back through it.
        self.plug(
            &lan,
            "wan",
            "p-wan",
            None,
            Ipv4Net::new(WAN_IP, 24).expect("valid"),
            WAN_ROUTER_IP,
        )
        .await?;
        let wan0 = self.step("find p-wan", lan.link("p-wan").await)?;
        if let Some(l) = wan0 {
            let r = lan
                .add_addr(l.index, Ipv4Net::new(WAN_ROUTER_IP, 24).expect("valid"))
                .await;
            self.step("address the wan side of the router", r)?;
        }
        for i in 1..=self.spec.hosts.max(1) {
            let member = host_member(i);
            self.plug(
                &lan,
                &member,
                &format!("p-{member}"),
                Some(br.index),
                Ipv4Net::new(host_ip(i), 24).expect("valid"),
                ROUTER_IP,
            )
            .await?;
        }
        Ok(())
    }

    /// Connect member `member` to the lan namespace with a veth (`port` on the lan side,
    /// `eth0` inside the member), address it and route by `gateway`.
    async fn plug(
        &self,
        lan: &Netlink,
        member: &str,
        port: &str,
        bridge: Option<u32>,
        addr: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        let ns_file = self.step(
            &format!("open {member}"),
            std::fs::File::open(self.ns(member)),
        )?;
        let r = lan.add_veth_into(port, "eth0", &ns_file, 1500).await;
        let link = self.step(&format!("connect {member}"), r)?;
        if let Some(b) = bridge {
            let r = lan.set_master(link.index, b).await;
            self.step(&format!("plug {member} into the switch"), r)?;
        }
        let inner = self.step(
            &format!("open {member}"),
            Netlink::in_namespace(&self.ns(member)),
        )?;
        let eth0 = self.step("find eth0", inner.link("eth0").await)?;
        let Some(eth0) = eth0 else {
            return Err(LabError::Step {
                lab: self.spec.name.clone(),
                what: format!("connect {member}"),
                reason: "eth0 missing".into(),
            });
        };
        let r = inner.add_addr(eth0.index, addr).await;
        self.step(&format!("address {member}"), r)?;
        let r = inner.set_up(eth0.index).await;
        self.step(&format!("bring up {member}"), r)?;
        // A static route: the runner's reconcile removes only routes tagged as Weir's.
        let r = inner
            .replace_route_as(
                Ipv4Net::default(),
                Some(gateway),
                Some(eth0.index),
                STATIC_ROUTE,
            )
            .await;
        self.step(&format!("route {member}"), r)?;
        Ok(())
    }

    /// A generated configuration with the sections of `daemon_config` that `takes` merged
    /// over it.
    fn merged(&self, generated: String, takes: impl Fn(&str) -> bool) -> Result<String> {
        let over: toml::Table = self
            .spec
            .daemon_config
            .iter()
            .filter(|(k, _)| takes(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if over.is_empty() {
            return Ok(generated);
        }
        let mut base = self.step(
            "read the generated configuration",
            generated.parse::<toml::Table>(),
        )?;
        merge_tables(&mut base, &over);
        self.step("merge the lab's --config", toml::to_string(&base))
    }

    fn host_config(&self, i: u32) -> Result<String> {
        let generated = self.generated_host_config(i);
        self.merged(generated, |section| section != "runner")
    }

    fn runner_config(&self, i: u32) -> Result<String> {
        let generated = self.generated_runner_config(i);
        self.merged(generated, |section| {
            section == "runner" || section == "telemetry"
        })
    }

    fn generated_host_config(&self, i: u32) -> String {
        let d = self.dir.display();
        let member = host_member(i);
        let ip = host_ip(i);
        let name = if self.spec.hosts > 1 {
            format!("name = \"h{i}\"\n")
        } else {
            String::new()
        };
        let store = match &self.etcd {
            Some(etcd) => format!(
                "[store]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/weir/{}/\"\n",
                etcd.endpoints(),
                self.spec.name
            ),
            None => String::new(),
        };
        format!(
            "[overlay]\n{}\n[host]\n{name}listen = \"0.0.0.0:{HOST_PORT}\"\nallow_plaintext = {}\ncontrol_socket = \"{d}/{member}.sock\"\nreachable_address = \"{ip}\"\nstate_dir = \"{d}/{member}-state\"\n{}\n[auth]\ncontrol_token_files = [\"{d}/control.token\"]\njoin_token_file = \"{d}/join.token\"\n{store}{}\n",
            self.spec.overlay,
            self.spec.plaintext,
            self.spec.host_keys.replace("{member}", &member),
            self.spec.host_extra
        )
    }

    fn generated_runner_config(&self, i: u32) -> String {
        let d = self.dir.display();
        let docker = if self.spec.docker {
            format!(
                "docker_socket = \"{}\"\n",
                self.docker_plugins(i).join("weir.sock").display()
            )
        } else {
            String::new()
        };
        let hosts = if self.spec.hosts > 1 {
            let urls: Vec<String> = (1..=self.spec.hosts).map(|h| self.host_url(h)).collect();
            format!("hosts = {urls:?}\n")
        } else {
            String::new()
        };
        format!(
            "[runner]\nname = \"r{i}\"\n{hosts}host = \"{}\"\nstate_dir = \"{d}/r{i}-state\"\njoin_token_file = \"{d}/join.token\"\nsocket = \"{d}/r{i}.sock\"\n{docker}{}\n{}\n",
            self.spec.host_url, self.spec.runner_keys, self.spec.runner_extra
        )
    }

    /// Runner `i`'s Docker plugin directory (with `spec.docker`): its driver's socket is
    /// `weir.sock` there; a dockerd of the runner's sees it as `/run/docker/plugins`.
    pub fn docker_plugins(&self, i: u32) -> PathBuf {
        self.dir.join(format!("r{i}-plugins"))
    }

    /// The control token of this lab's host (what `weir` commands and schedulers present).
    pub fn control_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The join token of this lab's runners.
    pub fn join_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("join.token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn write_tokens(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for name in ["control.token", "join.token"] {
            let path = self.dir.join(name);
            let r = std::fs::write(&path, crate::auth::random_token()).and_then(|()| {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            });
            self.step(&format!("write {name}"), r)?;
        }
        Ok(())
    }

    /// The URL of host `i`'s gRPC API on the underlay (every host speaks the scheme of
    /// `spec.host_url`).
    pub fn host_url(&self, i: u32) -> String {
        if i == 1 {
            self.spec.host_url.clone()
        } else {
            let scheme = if self.spec.host_url.starts_with("https:") {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}:{HOST_PORT}", host_ip(i))
        }
    }

    /// Host `i`'s control API from the machine's own namespace (its unix socket).
    pub fn control_url_of(&self, i: u32) -> String {
        format!(
            "unix://{}",
            self.dir.join(format!("{}.sock", host_member(i))).display()
        )
    }

    /// Whether host `i` serves as the hub (its control API answers; a standby refuses).
    pub async fn leads(&self, i: u32) -> bool {
        let Ok(ch) = crate::api::client::connect(&self.control_url_of(i), Default::default()).await
        else {
            return false;
        };
        let Ok(bearer) = crate::api::auth::Bearer::new(Some(&self.control_token())) else {
            return false;
        };
        weir_proto::v1::control_client::ControlClient::with_interceptor(ch, bearer)
            .get_status(weir_proto::v1::GetStatusRequest {})
            .await
            .is_ok()
    }

    /// Host `i`'s daemon, if it runs.
    pub fn host_daemon(&mut self, i: u32) -> Option<&mut Daemon> {
        if i == 1 {
            self.host.as_mut()
        } else {
            self.other_hosts.get_mut(&i)
        }
    }

    /// Start (or restart) the host daemon and wait until it is ready (with
    /// `spec.etcd_members`, its etcd first, once).
    pub async fn start_host(&mut self) -> Result<()> {
        self.start_host_n(1).await
    }

    /// Start (or restart) host `i` and wait until it is ready (as the hub, or as a standby).
    pub async fn start_host_n(&mut self, i: u32) -> Result<()> {
        if self.spec.etcd_members > 0 && self.etcd.is_none() {
            let several = self.spec.hosts > 1;
            let spec = etcd::EtcdSpec {
                name: self.spec.name.clone(),
                members: self.spec.etcd_members,
                netns: Some(self.ns_name(if several { "lan" } else { "host" })),
                address: several.then_some(ROUTER_IP),
            };
            let r = tokio::task::spawn_blocking(move || etcd::EtcdCluster::start(spec)).await;
            let r = self.step("start etcd", r)?;
            self.etcd = Some(self.step("start etcd", r)?);
        }
        let member = host_member(i);
        let cfg = self.dir.join(format!("{member}.toml"));
        let r = std::fs::write(&cfg, self.host_config(i)?);
        self.step("write host config", r)?;
        let r = Daemon::start(self, &member, &["host"], &cfg).await;
        let d = self.step(&format!("start {member}"), r)?;
        if i == 1 {
            self.host = Some(d);
        } else {
            self.other_hosts.insert(i, d);
        }
        // On etcd a host is ready once it stands by; the only one running leads soon after.
        let alone = (1..=self.spec.hosts.max(1))
            .filter(|&h| h != i)
            .all(|h| !self.host_daemon(h).is_some_and(|d| d.running()));
        if self.spec.etcd_members > 0 && alone {
            let deadline = tokio::time::Instant::now() + self.spec.ready_timeout;
            while !self.leads(i).await {
                if tokio::time::Instant::now() >= deadline {
                    return Err(LabError::Step {
                        lab: self.spec.name.clone(),
                        what: format!("start {member}"),
                        reason: format!(
                            "it did not lead within {:?}, alone on etcd",
                            self.spec.ready_timeout
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Add runner `i` (namespace, underlay port, daemon) and wait until it is registered.
    pub async fn add_runner(&mut self, i: u32) -> Result<()> {
        let member = format!("r{i}");
        let r = netns::create(&self.ns_name(&member));
        self.step(&format!("create namespace {member}"), r)?;
        let lan = self.step("open lan", Netlink::in_namespace(&self.ns("lan")))?;
        let br = self
            .step("find the switch", lan.link("br0").await)?
            .map(|l| l.index);
        self.plug(
            &lan,
            &member,
            &format!("p-{member}"),
            br,
            Ipv4Net::new(runner_ip(i), 24).expect("valid"),
            ROUTER_IP,
        )
        .await?;
        self.start_runner(i).await
    }

    /// Start (or restart) runner `i`'s daemon and wait until it is registered.
    pub async fn start_runner(&mut self, i: u32) -> Result<()> {
        let cfg = self.dir.join(format!("r{i}.toml"));
        let r = std::fs::write(&cfg, self.runner_config(i)?);
        self.step("write runner config", r)?;
        let r = Daemon::start(self, &format!("r{i}"), &["runner"], &cfg).await;
        let d = self.step(&format!("start runner {i}"), r)?;
        self.runners.insert(i, d);
        Ok(())
    }

    /// Create workload `w`'s namespace on runner `i` and attach it through the host.
    pub async fn add_workload(&mut self, i: u32, w: u32) -> Result<String> {
        let member = format!("r{i}-w{w}");
        let r = netns::create(&self.ns_name(&member));
        self.step(&format!("create namespace {member}"), r)?;
        self.workloads.insert((i, w), self.ns_name(&member));
        let ns = self.ns(&member);
        let out = self.weir(&[
            "attach",
            "--runner",
            &format!("r{i}"),
            "--id",
            &member,
            "--netns",
            &ns.display().to_string(),
            "--json",
        ]);
        let out = self.step(&format!("attach {member}"), out)?;
        if !out.status.success() {
            return Err(LabError::Step {
                lab: self.spec.name.clone(),
                what: format!("attach {member}"),
                reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let v: serde_json::Value =
            self.step("read attach output", serde_json::from_slice(&out.stdout))?;
        Ok(v["ip"].as_str().unwrap_or_default().to_string())
    }

    /// `weir status --json` of this lab's host.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.weir(&["status", "--json"]).ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Run `weir ARGS…` against this lab's host (from the machine's namespace, over the socket;
    /// with several hosts, over every host's socket: the CLI finds the leader).
    pub fn weir(&self, args: &[&str]) -> std::io::Result<Output> {
        let hosts: Vec<String> = (1..=self.spec.hosts.max(1))
            .map(|i| self.control_url_of(i))
            .collect();
        Command::new(&self.spec.weir_bin)
            .args(args)
            .env("WEIR_HOST", hosts.join(","))
            .env("WEIR_TOKEN", self.control_token())
            .env_remove("WEIR_CONFIG")
            .output()
    }

    /// Run a program inside a lab namespace.
    pub fn exec(&self, member: &str, program: &str, args: &[&str]) -> std::io::Result<Output> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        run_in_namespace(&mut cmd, &self.ns(member))?.output()
    }

    /// One ping from a member to an address: did it get an answer?
    pub fn ping(&self, member: &str, to: Ipv4Addr) -> bool {
        self.exec(
            member,
            "ping",
            &["-c", "1", "-W", "2", "-q", &to.to_string()],
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    /// The first IPv4 address of `eth0` in a member's namespace.
    pub async fn address_of(&self, member: &str) -> Option<Ipv4Net> {
        let nl = Netlink::in_namespace(&self.ns(member)).ok()?;
        let l = nl.link("eth0").await.ok()??;
        nl.addrs(l.index).await.ok()?.into_iter().next()
    }

    /// Open a TCP listener on the wan peer that records the source address of each connection.
    pub fn wan_listener(&self) -> Result<WanProbe> {
        let r = netns::run_in(&self.ns("wan"), || TcpListener::bind((WAN_IP, 0)));
        let listener = self.step("listen on the wan", r.and_then(|r| r))?;
        Ok(WanProbe { listener })
    }

    /// Connect from a member to the wan probe; returns the source address the wan saw.
    pub fn wan_sees(&self, member: &str, probe: &WanProbe) -> Option<Ipv4Addr> {
        let target = probe.listener.local_addr().ok()?;
        let connect = netns::run_in(&self.ns(member), move || {
            TcpStream::connect_timeout(&target, Duration::from_secs(3))
        });
        let _stream = connect.ok()?.ok()?;
        // The connection is normally queued by now; never wait for one without a bound (a
        // connection reset before it was accepted leaves nothing to accept).
        probe.listener.set_nonblocking(true).ok()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let peer = loop {
            match probe.listener.accept() {
                Ok((_, peer)) => break peer,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        };
        match peer {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            SocketAddr::V6(_) => None,
        }
    }

    /// Keep the lab running after this value is dropped (`weir lab up`).
    pub fn keep(mut self) {
        self.keep = true;
        for d in self
            .runners
            .values_mut()
            .chain(self.host.iter_mut())
            .chain(self.other_hosts.values_mut())
        {
            d.forget();
        }
    }

    /// A connectivity report: the runners' status, who reaches whom, what the wan sees.
    pub async fn report(&self) -> String {
        let mut out = String::new();
        if let Ok(o) = self.weir(&["status"]) {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        let mut members: Vec<(String, Option<Ipv4Addr>)> = Vec::new();
        for ns in self.workloads.keys().map(|(r, w)| format!("r{r}-w{w}")) {
            let addr = self.address_of(&ns).await.map(|a| a.addr());
            members.push((ns, addr));
        }
        let _ = writeln!(out, "\nconnectivity (ping from row to column):");
        let mut header = vec!["FROM \\ TO".to_string()];
        header.extend(members.iter().map(|(n, _)| n.clone()));
        let host_overlay_ip = self.host_overlay_ip();
        header.push(host_overlay_ip.map_or("host".into(), |h| format!("host {h}")));
        header.push(format!("wan {WAN_IP}"));
        header.push("wan sees".into());
        let mut rows = Vec::new();
        let probe = self.wan_listener().ok();
        for (from, _) in &members {
            let mut row = vec![from.clone()];
            for (to, addr) in &members {
                row.push(match addr {
                    _ if to == from => "-".into(),
                    Some(a) if self.ping(from, *a) => "ok".into(),
                    _ => "FAIL".into(),
                });
            }
            row.push(match host_overlay_ip {
                Some(h) if self.ping(from, h) => "ok".into(),
                Some(_) => "FAIL".into(),
                None => "n/a".into(),
            });
            row.push(if self.ping(from, WAN_IP) {
                "ok".into()
            } else {
                "FAIL".into()
            });
            row.push(
                probe
                    .as_ref()
                    .and_then(|p| self.wan_sees(from, p))
                    .map(|ip| ip.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
            rows.push(row);
        }
        out.push_str(&render_rows(&header, &rows));
        out
    }

    fn host_overlay_ip(&self) -> Option<Ipv4Addr> {
        let out = self.weir(&["status", "--json"]).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let ip = v["host_ip"].as_str()?;
        ip.split('/').next()?.parse().ok()
    }
}

/// A listener on the wan peer.
pub struct WanProbe {
    listener: TcpListener,
}

fn render_rows(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", s.join("  ").trim_end())
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            down(&self.spec.name);
        }
    }
}

/// The namespace name of a lab member.
pub fn ns_name(lab: &str, member: &str) -> String {
    format!("weir-{lab}-{member}")
}

/// Tear a lab down: kill every process running in its namespaces, delete the namespaces and
/// the lab directory. Works after a crash; a lab that does not exist is not an error.
/// Returns what was removed.
pub fn down(lab: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let names = netns::list(&format!("weir-{lab}-")).unwrap_or_default();
    let inodes: Vec<u64> = names
        .iter()
        .filter_map(|n| netns::inode(&netns::named_path(n)).ok())
        .collect();
    for pid in process::pids_in_namespaces(&inodes) {
        process::kill_and_reap(pid);
        removed.push(format!("process {pid}"));
    }
    // Workload namespaces first, so veths disappear with their peers before the runners go.
    let mut ordered = names.clone();
    ordered.sort_by_key(|n| std::cmp::Reverse(n.matches('-').count()));
    for n in ordered {
        match netns::delete(&n) {
            Ok(()) => removed.push(format!("namespace {n}")),
            Err(e) => tracing::warn!(namespace = %n, error = %e, "cannot delete namespace"),
        }
    }
    // The lab's directory, and its etcd's data (`lab::etcd` in the host's namespace).
    for dir in [
        Path::new(LAB_RUN_DIR).join(lab),
        Path::new(LAB_RUN_DIR).join(format!("{lab}-etcd")),
    ] {
        if dir.exists() && std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(format!("directory {}", dir.display()));
        }
    }
    removed
}
