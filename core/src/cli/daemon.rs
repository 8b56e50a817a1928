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
use crate::config::{LoadedConfig, Mtu};
use crate::dataplane::host::HostDataplane;
use crate::dataplane::host_kernel::{HostKernel, Isolated};
use crate::dataplane::netlink::Netlink;
use crate::hub::{Hub, HubSettings, TtlBounds};
use crate::logging::LogFormat;
use crate::network::NetworkDef;
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
        let store = super::store_cmd::open(c).await?;
        let kernel: std::sync::Arc<dyn HostKernel> = if c.overlay.enabled {
            std::sync::Arc::new(HostDataplane::new(nl.clone()))
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
        };
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
        crate::api::server::serve(
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
            shutdown_signal(),
        )
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "gRPC server: {}",
                crate::api::client::error_chain(&e)
            ))
        })?;
        tracing::info!("host stopped");
        Ok(())
    }
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
    let host_url = c.runner.host.clone().ok_or_else(|| {
        CliError::Usage(format!(
            "runner.host ({}): required: the URL of the host's gRPC endpoint, e.g. \"http://192.0.2.1:7700\"",
            loaded.source_of("runner.host")
        ))
    })?;
    let r = &c.runner;
    let tls = crate::api::client::ClientTls::load(
        r.tls_ca.as_deref(),
        r.tls_cert.as_deref(),
        r.tls_key.as_deref(),
    )
    .map_err(|e| CliError::Usage(format!("runner.tls_ca/tls_cert/tls_key: {e}")))?;
    crate::api::client::endpoint_tls(&host_url, Default::default(), &tls).map_err(|e| {
        CliError::Usage(format!(
            "runner.host ({}): {e}",
            loaded.source_of("runner.host")
        ))
    })?;
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
        host_url,
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
        tracing::info!(runner = %settings.name, host = %settings.host_url, "runner starting");
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
