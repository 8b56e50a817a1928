//! `weir host` and `weir runner`: load the configuration, check what the role needs, and run
//! the daemon until SIGTERM or SIGINT.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use crate::agent::{Agent, Expectation};
use crate::api::auth::Gate;
use crate::api::runner::RunnerSettings;
use crate::auth::TokenSet;
use crate::auth::reservation::Signer;
use crate::cluster::{Cluster, ConfigDigest, HostRecord};
use crate::config::schema::StoreBackend;
use crate::config::{LoadedConfig, Mtu};
use crate::dataplane::host::HostDataplane;
use crate::dataplane::host_kernel::{HostKernel, Isolated};
use crate::dataplane::netlink::Netlink;
use crate::hub::{Hub, HubLeadership, HubSettings, TtlBounds};
use crate::logging::LogFormat;
use crate::network::NetworkDef;
use crate::store::etcd_store::leader::Leadership;
use crate::telemetry::{Role, Telemetry};

/// Run the hub.
pub fn host(file: Option<&Path>, log_format: LogFormat) -> Result<(), CliError> {
    let loaded = crate::config::load(file)?;
    // Refused before anything starts (telemetry binds its port).
    let plaintext = crate::config::validate::validate_host(&loaded)?;
    runtime()?.block_on(async move {
        let telemetry = start_telemetry(&loaded, Role::Host, log_format).await?;
        if let Some(warning) = plaintext {
            tracing::warn!("!!! {warning} !!!");
        }
        let result = run_host(&loaded).await;
        stop_telemetry(telemetry).await;
        result
    })
}

async fn run_host(loaded: &LoadedConfig) -> Result<(), CliError> {
    let reachable = check_reachable(loaded)?;
    let gate = load_gate(loaded)?;
    let tls = server_tls(loaded)?;
    {
        let nl = Netlink::current().map_err(fail)?;
        let mtu = resolve_mtu(loaded, &nl, reachable).await?;
        let c = &loaded.config;
        let networks = NetworkDef::from_config(c, mtu);
        // Several hosts on etcd: join the host set, serve as a standby until this host leads.
        let (store, cluster): (Arc<dyn crate::store::Store>, Option<Arc<Cluster>>) =
            match c.store.backend {
                StoreBackend::Etcd => {
                    let etcd = super::store_cmd::open_etcd(c).await?;
                    let me = host_record(loaded, reachable);
                    let cluster = Cluster::join(etcd.clone(), me, c.host.lease_ttl.get())
                        .await
                        .map_err(fail)?;
                    (etcd, Some(Arc::new(cluster)))
                }
                StoreBackend::Redb => (super::store_cmd::open(c).await?, None),
            };
        let mut leadership = None;
        // The standby's server keeps answering ("taking over") until the hub's binds.
        let mut standby_server = None;
        if let Some(cl) = &cluster {
            if let Some((l, server)) = stand_by(loaded, cl, tls.clone()).await? {
                leadership = Some(l);
                standby_server = Some(server);
            } else {
                // Stopped while standing by: nothing of the hub's was built.
                if let Some(cl) = cluster
                    && let Err(e) = cl.leave().await
                {
                    tracing::warn!(error = %e, "leaving the host set failed; its record expires with the lease");
                }
                tracing::info!("host stopped (standby)");
                return Ok(());
            }
        }
        let dataplane = Arc::new(if cluster.is_some() {
            HostDataplane::new(nl.clone()).with_stable_macs()
        } else {
            HostDataplane::new(nl.clone())
        });
        let kernel: std::sync::Arc<dyn HostKernel> = if c.overlay.enabled {
            dataplane.clone()
        } else {
            std::sync::Arc::new(Isolated)
        };
        let r = &c.reservations;
        let settings = HubSettings {
            networks,
            reachable_address: reachable,
            heartbeat_timeout: c.host.heartbeat_timeout.get(),
            workload_grace: c.host.workload_grace.get(),
            command_timeout: c.host.command_timeout.get(),
            reservation_ttl: TtlBounds {
                default: r.default_ttl.get(),
                min: r.min_ttl.get(),
                max: r.max_ttl.get(),
            },
            dns: c.overlay.dns.clone(),
            leadership: match (&cluster, leadership) {
                (Some(cl), Some((l, previous))) => Some(HubLeadership {
                    name: cl.name(),
                    fence: Arc::new(std::sync::RwLock::new(l.fence())),
                    previous,
                    hosts: cl.directory(),
                    deposed: Arc::default(),
                }),
                _ => None,
            },
        };
        let settings_fence = settings.leadership.as_ref().map(|l| l.fence.clone());
        let deposed = settings.leadership.as_ref().map(|l| l.deposed.clone());
        let signer =
            Signer::load_or_create(&c.host.state_dir.join("reservation.key")).map_err(fail)?;
        let p = &c.policy;
        let audit_path = p
            .decision_log
            .clone()
            .unwrap_or_else(|| c.host.state_dir.join("decisions.jsonl"));
        let audit = crate::policy::audit::Audit::open(&audit_path, p.audit).map_err(|e| {
            CliError::Failed(format!("policy.decision_log {}: {e}", audit_path.display()))
        })?;
        let policy = crate::policy::PolicyHost::load(
            &p.plugins,
            Some(c.host.state_dir.join("plugins")),
            audit,
        )
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
        let hub = Hub::start(settings, store, kernel, signer, policy)
            .await
            .map_err(fail)?;
        // Reading the store and the kernel at start (every runner, every tunnel) leaves freed
        // memory the allocator would otherwise keep: give it back.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        if c.policy.watch {
            hub.policy().watch(c.policy.watch_interval.get());
        }
        if let Some((stop, server)) = standby_server {
            let _ = stop.send(());
            let _ = server.await;
        }
        let listeners =
            crate::api::server::Listeners::bind(c.host.listen, c.host.control_socket.as_deref())
                .await
                .map_err(fail)?;
        let timeout = c.host.heartbeat_timeout.get();
        let tick = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let liveness = hub.clone();
        // The supervisor's watchdog is fed from the hub's liveness loop: a hub whose ticks hang
        // (its state lock never free) stops the notifications and gets restarted.
        let watchdog = crate::notify::Watchdog::from_env();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(tick);
            let alive = crate::notify::keep_alive(watchdog);
            tokio::pin!(alive);
            loop {
                tokio::select! {
                    _ = t.tick() => liveness.tick().await,
                    never = &mut alive => match never {},
                }
            }
        });
        tracing::info!(listen = %c.host.listen, overlay = c.overlay.enabled, "host ready");
        crate::notify::ready("host ready");
        // Serve until SIGTERM, or (several hosts) until this host's lease is lost.
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<bool>();
        let fence = settings_fence;
        let decision_log = hub.policy().audit().cloned();
        let stop = {
            let cluster = cluster.clone();
            let dataplane = dataplane.clone();
            let overlay = c.overlay.enabled;
            async move {
                let lost_lease = match (&cluster, &fence) {
                    (Some(cl), Some(fence)) => keep_leading(cl, fence).await,
                    _ => {
                        shutdown_signal().await;
                        false
                    }
                };
                let _ = lost_tx.send(lost_lease);
                if !lost_lease {
                    return crate::api::server::SHUTDOWN_GRACE;
                }
                // No commit is tried from here on, so the decision log can settle what is open
                // now for good: what has not committed never will.
                if let Some(d) = &deposed {
                    d.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if let Some(log) = &decision_log {
                    let term = fence
                        .as_ref()
                        .map_or(0, |f| f.read().unwrap_or_else(|p| p.into_inner()).term);
                    log.abandon(&format!(
                        "this host lost its lease on etcd (term {term}) before the operation committed"
                    ));
                }
                // Deposed: stop routing between runners before anything else, and drop the
                // runners' sessions at once so they go looking for the new leader.
                tracing::error!(
                    "this host lost its lease on etcd: it no longer leads; removing its tunnels and closing every session"
                );
                if overlay && let Err(e) = dataplane.step_down().await {
                    tracing::error!(error = %e, "removing the hub's tunnels after losing the lease failed");
                }
                Duration::ZERO
            }
        };
        let served = crate::api::server::serve(
            hub,
            gate,
            listeners,
            tls,
            timeout.max(Duration::from_secs(2)),
            crate::api::edge::EdgeLimits {
                unauthenticated_per_second: c.host.unauthenticated_calls_per_second,
                max_concurrent_calls: c.host.max_concurrent_calls,
                ..Default::default()
            },
            stop,
        )
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "gRPC server: {}",
                crate::api::client::error_chain(&e)
            ))
        });
        let lost_lease = lost_rx.await.unwrap_or(false);
        if let Some(cluster) = cluster {
            if let Err(e) = &served {
                tracing::error!(error = %e, "serving as the hub failed");
            }
            return step_down(cluster, &dataplane, lost_lease, c.overlay.enabled).await;
        }
        served?;
        tracing::info!("host stopped");
        Ok(())
    }
}

/// Lead until SIGTERM (`false`) or until the lease is lost while other hosts can take over
/// (`true`). A host alone in the host set that loses its lease (etcd unreachable for longer
/// than the margin) keeps its kernel as it is (runners keep forwarding; commits fail while
/// etcd is down) and takes the role back with a new lease and term when etcd answers —
/// unless another host leads by then.
async fn keep_leading(
    cluster: &Arc<Cluster>,
    fence: &std::sync::RwLock<crate::store::Fence>,
) -> bool {
    // Whether others are there is followed in the background: a read that waits on an
    // unreachable etcd must not delay noticing the lost lease.
    let _stop_refresher = AbortOnDrop(tokio::spawn(cluster.clone().follow_hosts()));
    loop {
        let lost = cluster.lost_signal().await;
        tokio::select! {
            _ = shutdown_signal() => return false,
            _ = lost => {}
        }
        if cluster.others_seen() {
            return true;
        }
        tracing::warn!(
            "this host lost its lease on etcd and is the only host: it keeps its tunnels and takes the role back once etcd answers"
        );
        loop {
            tokio::select! {
                _ = shutdown_signal() => return false,
                r = cluster.rejoin(fence) => match r {
                    Ok(Some(l)) => {
                        tracing::info!(term = l.term, "leading again");
                        break;
                    }
                    Ok(None) => return true,
                    Err(e) => {
                        tracing::debug!(error = %e, "rejoining the host set failed; trying again");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This host's record in the host set.
fn host_record(loaded: &LoadedConfig, reachable: Option<Ipv4Addr>) -> HostRecord {
    let c = &loaded.config;
    let tls = c.host.tls_cert.is_some() && c.host.tls_key.is_some();
    let url = c.host.url.clone().unwrap_or_else(|| {
        let ip = reachable
            .map(std::net::IpAddr::V4)
            .unwrap_or_else(|| c.host.listen.ip());
        format!(
            "{}://{ip}:{}",
            if tls { "https" } else { "http" },
            c.host.listen.port()
        )
    });
    HostRecord {
        name: super::store_cmd::host_name(c),
        url,
        underlay_ip: reachable.map(|a| a.to_string()).unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").into(),
        role: "standby".into(),
        term: 0,
        config: ConfigDigest::of(c),
        refusal: String::new(),
    }
}

/// The standby's server while the hub starts: how to stop it, and its task.
type StandbyServer = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
);

/// Serve as a standby (health, and refusals naming the leader) until this host leads;
/// `None` when SIGTERM came first (the host has then left the host set). The standby's
/// server is returned still running: it answers "taking over" until the hub serves.
async fn stand_by(
    loaded: &LoadedConfig,
    cluster: &Cluster,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<Option<((Leadership, Option<String>), StandbyServer)>, CliError> {
    let c = &loaded.config;
    let listeners =
        crate::api::server::Listeners::bind(c.host.listen, c.host.control_socket.as_deref())
            .await
            .map_err(fail)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let standby = tokio::spawn(crate::api::standby::serve(
        cluster.role(),
        listeners.tcp,
        listeners.unix.map(|(l, _)| l),
        tls,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tracing::info!(host = %cluster.name(), listen = %c.host.listen, "standing by: another host leads, or an election is under way");
    crate::notify::ready("standby");
    let won = tokio::select! {
        r = cluster.campaign() => r.map_err(fail)?,
        _ = shutdown_signal() => {
            let _ = stop_tx.send(());
            let _ = standby.await;
            return Ok(None);
        }
    };
    Ok(Some((won, (stop_tx, standby))))
}

/// After serving as the hub among several hosts: hand the role over (SIGTERM), or, with the
/// lease lost, stop acting as the hub in the kernel too and exit with an error (the service
/// manager starts it again, as a standby).
async fn step_down(
    cluster: Arc<Cluster>,
    dataplane: &HostDataplane,
    lost_lease: bool,
    overlay: bool,
) -> Result<(), CliError> {
    let m = &crate::telemetry::metrics::metrics().leadership_changes;
    if lost_lease {
        m.add(1, &[opentelemetry::KeyValue::new("change", "lost")]);
        // Again: a runner that registered during the shutdown may have had a tunnel made.
        if overlay && let Err(e) = dataplane.step_down().await {
            tracing::error!(error = %e, "removing the hub's tunnels after losing the lease failed");
        }
        // Crash-only from here: whatever is still in flight (a blocking task waiting on the
        // unreachable etcd) must not keep a deposed hub's process alive.
        eprintln!(
            "error: this host lost its lease on etcd (it could not renew it in time): it no longer leads, its tunnels are removed; start it again to stand by"
        );
        std::process::exit(1);
    }
    // Another live host takes over at once: leave it the overlay addresses too. Alone, keep
    // the kernel as it is (a restart adopts it without a flap).
    let others = cluster
        .directory()
        .hosts()
        .await
        .into_iter()
        .any(|h| h.name != cluster.name());
    m.add(1, &[opentelemetry::KeyValue::new("change", "resigned")]);
    if let Err(e) = cluster.leave().await {
        tracing::warn!(error = %e, "handing over the hub role failed; a standby takes over once the lease expires");
    }
    if others
        && overlay
        && let Err(e) = dataplane.step_down().await
    {
        tracing::warn!(error = %e, "removing the hub's tunnels after handing over failed");
    }
    tracing::info!(handed_over = others, "host stopped");
    Ok(())
}

/// Install logging, traces and metrics; a bad `[telemetry]` stops the daemon before it acts.
async fn start_telemetry(
    loaded: &LoadedConfig,
    role: Role,
    log_format: LogFormat,
) -> Result<Telemetry, CliError> {
    let t = crate::telemetry::init(&loaded.config, role, log_format)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(addr) = t.prometheus_addr() {
        tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics");
    }
    Ok(t)
}

/// Flush buffered spans and metrics (off the async workers: the exporters block).
async fn stop_telemetry(t: Telemetry) {
    let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
}

/// Run a runner agent.
pub fn runner(file: Option<&Path>, log_format: LogFormat) -> Result<(), CliError> {
    let loaded = crate::config::load(file)?;
    runtime()?.block_on(async move {
        let telemetry = start_telemetry(&loaded, Role::Runner, log_format).await?;
        let result = run_runner(&loaded).await;
        stop_telemetry(telemetry).await;
        result
    })
}

async fn run_runner(loaded: &LoadedConfig) -> Result<(), CliError> {
    let c = &loaded.config;
    let mut host_urls: Vec<String> = c.runner.host.iter().cloned().collect();
    for u in &c.runner.hosts {
        if !host_urls.contains(u) {
            host_urls.push(u.clone());
        }
    }
    if host_urls.is_empty() {
        return Err(CliError::Usage(format!(
            "runner.host ({}): required (or runner.hosts, with several hosts): the URL of the host's gRPC endpoint, e.g. \"http://192.0.2.1:7700\"",
            loaded.source_of("runner.host")
        )));
    }
    let r = &c.runner;
    let tls = crate::api::client::ClientTls::load(
        r.tls_ca.as_deref(),
        r.tls_cert.as_deref(),
        r.tls_key.as_deref(),
    )
    .map_err(|e| CliError::Usage(format!("runner.tls_ca/tls_cert/tls_key: {e}")))?;
    for url in &host_urls {
        crate::api::client::endpoint_tls(url, Default::default(), &tls).map_err(|e| {
            let key = if c.runner.host.as_ref() == Some(url) {
                "runner.host"
            } else {
                "runner.hosts"
            };
            CliError::Usage(format!("{key} ({}): {e}", loaded.source_of(key)))
        })?;
    }
    let name = match &c.runner.name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                CliError::Usage("runner.name: not set and the hostname is unknown".into())
            })?,
    };
    std::fs::create_dir_all(&c.runner.state_dir).map_err(|e| {
        CliError::Failed(format!(
            "runner.state_dir {}: {e}",
            c.runner.state_dir.display()
        ))
    })?;
    let join_token = match &c.runner.join_token_file {
        Some(f) => Some(crate::auth::read_token(f).map_err(|e| {
            CliError::Usage(format!(
                "runner.join_token_file ({}): {e}",
                loaded.source_of("runner.join_token_file")
            ))
        })?),
        None => None,
    };
    let socket = c.runner.socket.clone();
    let settings = RunnerSettings {
        tls,
        join_token,
        name,
        host_urls,
        physical_ip: c.runner.physical_ip,
        heartbeat_interval: c.runner.heartbeat_interval.get(),
        labels: c.runner.labels.clone(),
        expectations: expectations(loaded),
    };
    let uplink = c.runner.uplink.as_ref().map(|u| u.to_string());
    {
        let nl = Netlink::current().map_err(fail)?;
        let agent = Arc::new(Agent::new(
            nl,
            uplink,
            crate::dataplane::netns::NetnsPolicy::from_config(&c.runner),
        ));
        let local = crate::api::server::bind_unix(&socket).await.map_err(fail)?;
        let uplink = Arc::new(crate::api::local::Uplink::new(&settings.name));
        tokio::spawn(crate::api::local::serve(
            local,
            uplink.clone(),
            agent.clone(),
        ));
        if let Some(path) = &c.runner.docker_socket {
            let app =
                crate::api::docker::driver(uplink.clone(), agent.clone(), &c.runner.state_dir)
                    .map_err(|e| CliError::Failed(format!("runner.docker_socket: {e}")))?;
            let listener = crate::api::server::bind_unix(path)
                .await
                .map_err(|e| CliError::Failed(format!("runner.docker_socket: {e}")))?;
            tokio::spawn(crate::api::docker::serve(listener, app));
        }
        tracing::info!(runner = %settings.name, hosts = %settings.host_urls.join(","), "runner starting");
        // The watchdog is fed from the task of the runner's main loop (polled beside it), so
        // a loop that blocks its thread stops the notifications.
        let watchdog = crate::notify::Watchdog::from_env();
        tokio::select! {
            r = crate::api::runner::run(settings, agent, uplink, shutdown_signal()) => {
                r.map_err(|e| CliError::Usage(e.to_string()))?
            }
            never = crate::notify::keep_alive(watchdog) => match never {},
        }
        tracing::info!("runner stopped");
        Ok(())
    }
}

/// The overlay settings a runner's configuration sets explicitly (the host must agree).
fn expectations(loaded: &LoadedConfig) -> Vec<Expectation> {
    let o = &loaded.config.overlay;
    let values = [
        ("overlay.enabled", o.enabled.to_string()),
        ("overlay.subnet", o.subnet.to_string()),
        ("overlay.vxlan_id_base", o.vxlan_id_base.to_string()),
        ("overlay.vxlan_port", o.vxlan_port.to_string()),
        ("overlay.mtu", o.mtu.to_string()),
    ];
    values
        .into_iter()
        .filter(|(key, value)| {
            loaded.is_explicit(key) && !(key == &"overlay.mtu" && value == "auto")
        })
        .map(|(key, value)| Expectation {
            key: key.to_string(),
            value,
            source: loaded.source_of(key),
        })
        .collect()
}

/// TLS (and mTLS) for the host's TCP listener, from `host.tls_*`.
fn server_tls(
    loaded: &LoadedConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, CliError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let h = &loaded.config.host;
    let read = |key: &str, p: &Path| {
        std::fs::read(p).map_err(|e| {
            CliError::Usage(format!(
                "{key} ({}): {}: {e}",
                loaded.source_of(key),
                p.display()
            ))
        })
    };
    let (cert, key) = match (&h.tls_cert, &h.tls_key) {
        (Some(c), Some(k)) => (read("host.tls_cert", c)?, read("host.tls_key", k)?),
        (None, None) => {
            if h.tls_client_ca.is_some() {
                return Err(CliError::Usage(
                    "host.tls_client_ca: mTLS needs host.tls_cert and host.tls_key too".into(),
                ));
            }
            return Ok(None);
        }
        _ => {
            return Err(CliError::Usage(
                "host.tls_cert and host.tls_key: give both or neither".into(),
            ));
        }
    };
    let mut cfg = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &h.tls_client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read("host.tls_client_ca", ca)?));
    }
    Ok(Some(cfg))
}

/// The tokens the host accepts; without any, the host starts only with `auth.insecure`.
fn load_gate(loaded: &LoadedConfig) -> Result<Gate, CliError> {
    let a = &loaded.config.auth;
    let control = TokenSet::load(&a.control_token_files).map_err(|e| {
        CliError::Usage(format!(
            "auth.control_token_files ({}): {e}",
            loaded.source_of("auth.control_token_files")
        ))
    })?;
    let join = TokenSet::load(a.join_token_file.as_slice()).map_err(|e| {
        CliError::Usage(format!(
            "auth.join_token_file ({}): {e}",
            loaded.source_of("auth.join_token_file")
        ))
    })?;
    if a.insecure {
        tracing::warn!(
            "!!! auth.insecure = true: ANYONE who can reach this host can drive it and join runners; never run like this outside a lab !!!"
        );
        return Ok(Gate::new(control, join, true));
    }
    if control.is_empty() || join.is_empty() {
        return Err(CliError::Usage(
            "auth: the host needs auth.control_token_files (for schedulers and the CLI) and auth.join_token_file (for runners); set them, or set auth.insecure = true to run without authentication".into(),
        ));
    }
    Ok(Gate::new(control, join, false))
}

fn check_reachable(loaded: &LoadedConfig) -> Result<Option<Ipv4Addr>, CliError> {
    let c = &loaded.config;
    if !c.overlay.enabled {
        return Ok(c.host.reachable_address);
    }
    let key = "host.reachable_address";
    match c.host.reachable_address {
        None => Err(CliError::Usage(format!(
            "{key} ({}): required when the overlay is enabled: the underlay IPv4 address runners tunnel to",
            loaded.source_of(key)
        ))),
        Some(ip) if ip.is_loopback() || ip.is_unspecified() => Err(CliError::Usage(format!(
            "{key} ({}): {ip} cannot be reached by runners; give the host's underlay address",
            loaded.source_of(key)
        ))),
        Some(ip) => Ok(Some(ip)),
    }
}

async fn resolve_mtu(
    loaded: &LoadedConfig,
    nl: &Netlink,
    reachable: Option<Ipv4Addr>,
) -> Result<u32, CliError> {
    match loaded.config.overlay.mtu {
        Mtu::Fixed(m) => Ok(m),
        Mtu::Auto => {
            let ip = reachable.ok_or_else(|| {
                CliError::Usage(
                    "overlay.mtu = \"auto\" needs host.reachable_address to find the underlay"
                        .into(),
                )
            })?;
            for link in nl.links().await.map_err(fail)? {
                if nl
                    .addrs(link.index)
                    .await
                    .map_err(fail)?
                    .iter()
                    .any(|a| a.addr() == ip)
                {
                    return Ok(Mtu::Auto.resolve(link.mtu));
                }
            }
            Err(CliError::Usage(format!(
                "overlay.mtu = \"auto\": no interface here holds host.reachable_address {ip}"
            )))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    raise_open_file_limit();
    // glibc gives every thread that allocates its own arena (up to 8 per core); the blocking
    // threads (nftables, netlink batches) would each keep one, mostly free but resident.
    // Two are enough for a daemon whose work is in two runtime threads.
    // SAFETY: mallopt only tunes the allocator; called before any thread is started.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("start the async runtime: {e}")))
}

/// A daemon holds a few descriptors per workload command in flight (its namespace, a netlink
/// and an ARP socket), more under a burst of attaches than the usual soft limit of 1,024
/// allows. Raise the soft limit to the hard one, as systemd's `LimitNOFILE` would (the Go
/// runtime does the same at start); a failure leaves the limit as it was.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    crate::notify::notify("STOPPING=1");
}
