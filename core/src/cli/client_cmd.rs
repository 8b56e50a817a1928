//! Commands that drive a running host over `weir.v1.Control`: status, runners, attach, detach,
//! workloads, reserve, reservations, release, cleanup, watch.
//!
//! Every command takes `--host URL` (env `WEIR_HOST`; default: the configured control socket),
//! `--token-file FILE` (or env `WEIR_TOKEN`) and `--json`, and send `TRACEPARENT`/`TRACESTATE`
//! from the environment as the call's trace context ([`super::conn`]). Tables are for people;
//! the JSON is stable for scripts ([`super::render`]).

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use weir_proto::v1 as pb;

use super::conn::{Client, Conn, client, refused};
use super::render::{
    attach_json, event_json, event_kind, kind_name, print_json, render_status, rfc3339,
    runner_json, runner_table, status_json,
};
use super::{CliError, parse_key_value};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show the cluster: versions, plan, host address, counts and runners (--watch: redraw
    /// it until interrupted).
    Status(StatusArgs),
    /// List runners (and placeholders).
    Runners,
    /// Give a workload's network namespace (or a VM) an interface on its runner's network.
    Attach(AttachArgs),
    /// Remove a workload's interface and free its address.
    Detach(DetachArgs),
    /// List workloads.
    Workloads(WorkloadsArgs),
    /// Reserve an address on a runner before the workload exists; prints a single-use token.
    Reserve(ReserveArgs),
    /// List reservations.
    Reservations {
        /// Only this runner's.
        #[arg(long)]
        runner: Option<String>,
    },
    /// Release a reservation (--token) or a runner's allocation (--runner).
    Release(ReleaseArgs),
    /// Release every inactive runner's allocation.
    Cleanup,
    /// Follow the cluster's events (resume with --after SEQ).
    Watch(WatchArgs),
    /// Compare the host's records with what each runner finds in its kernel (links,
    /// addresses, namespaces) and print every difference; exit 1 when there is one.
    Doctor {
        /// Only this runner.
        #[arg(long)]
        runner: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Redraw the status every --interval until interrupted (Ctrl-C); with --json, one JSON
    /// object per line and redraw.
    #[arg(long)]
    pub watch: bool,
    /// Time between two redraws of --watch, e.g. 500ms, 2s, 1m (at least 100ms).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval,
          requires = "watch")]
    pub interval: Duration,
    /// With --watch: stop after this many redraws.
    #[arg(long, value_name = "N", requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 500ms, 2s)"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: at least 100ms"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The runner the workload lives on.
    #[arg(long)]
    pub runner: String,
    /// The workload's id (letters, digits, '.', '_', '-', ':').
    #[arg(long = "id", value_name = "WORKLOAD")]
    pub id: String,
    /// The workload's network namespace on the runner (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "vm"])]
    pub netns: Option<String>,
    /// A process in the workload's network namespace, instead of --netns.
    #[arg(long, conflicts_with = "vm")]
    pub pid: Option<u32>,
    /// A VM: create a tap device on the runner's bridge and print what its cloud-init needs.
    #[arg(long)]
    pub vm: bool,
    /// A network to join (repeatable: one interface per network, eth0, eth1, … in this order;
    /// the first carries the default route). Default: the host's primary network.
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// A specific free address of the runner's subnet (on the first network).
    #[arg(long, conflicts_with = "token")]
    pub ip: Option<String>,
    /// A reservation token from `weir reserve`: the workload gets the reserved address (on
    /// the first network).
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Refuse unless the workload is on this runner (ids are unique per network, so the
    /// runner is only a check).
    #[arg(long)]
    pub runner: Option<String>,
    /// The workload's id, as given to `weir attach`.
    #[arg(long = "id", value_name = "WORKLOAD")]
    pub id: String,
    /// A network to leave (repeatable). Default: every network the workload is on.
    #[arg(long = "network", value_name = "NAME")]
    pub networks: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WorkloadsArgs {
    /// Only this runner's workloads.
    #[arg(long)]
    pub runner: Option<String>,
    /// Only workloads with this label KEY=VALUE (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// Only workloads on this network (default: every network).
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// Workloads per call (default: the host's, 1000); every page is fetched.
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// The runner whose subnet the address comes from.
    #[arg(long)]
    pub runner: String,
    /// A specific address (default: the next free one).
    #[arg(long)]
    pub ip: Option<String>,
    /// Seconds the token stays valid unused (default: the host's, 300).
    #[arg(long, value_name = "SECONDS")]
    pub ttl: Option<u32>,
    /// The network to reserve on (default: the host's primary network).
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReleaseArgs {
    /// Release this reservation token (its address returns to the pool).
    #[arg(long)]
    pub token: Option<String>,
    /// Release this runner's allocation, tunnel and workloads (a placeholder: #ID).
    #[arg(long)]
    pub runner: Option<String>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Resume after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Only new events (no replay).
    #[arg(long)]
    pub only_new: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

pub fn run(cmd: ClientCommand, conn: Conn, config: Option<&Path>) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("start the async runtime: {e}")))?;
    rt.block_on(async move {
        let mut c = client(&conn, config).await?;
        match cmd {
            ClientCommand::Status(a) => status(&mut c, a, conn.json).await,
            ClientCommand::Runners => runners(&mut c, conn.json).await,
            ClientCommand::Attach(a) => attach(&mut c, a, conn.json).await,
            ClientCommand::Detach(a) => detach(&mut c, a, conn.json).await,
            ClientCommand::Workloads(a) => workloads(&mut c, a, conn.json).await,
            ClientCommand::Reserve(a) => reserve(&mut c, a, conn.json).await,
            ClientCommand::Reservations { runner } => reservations(&mut c, runner, conn.json).await,
            ClientCommand::Release(a) => release(&mut c, a, conn.json).await,
            ClientCommand::Cleanup => cleanup(&mut c, conn.json).await,
            ClientCommand::Watch(a) => watch(&mut c, a, conn.json).await,
            ClientCommand::Doctor { runner } => doctor(&mut c, runner, conn.json).await,
        }
    })
}

async fn get_status(c: &mut Client) -> Result<pb::GetStatusResponse, CliError> {
    Ok(c.get_status(pb::GetStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner())
}

async fn status(c: &mut Client, a: StatusArgs, json: bool) -> Result<(), CliError> {
    if !a.watch {
        let s = get_status(c).await?;
        if json {
            print_json(&status_json(&s));
        } else {
            print!("{}", render_status(&s));
        }
        return Ok(());
    }
    // On a terminal each redraw replaces the last (as watch(1) does); into a pipe or file the
    // frames follow each other, separated by a blank line.
    let tty = !json && std::io::stdout().is_terminal();
    let every = humantime::format_duration(a.interval).to_string();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let frames = async {
        let mut tick = tokio::time::interval(a.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drawn = 0u64;
        loop {
            tick.tick().await;
            let got = get_status(c).await;
            // A host that cannot be asked at all is an error; one that stops answering later
            // is shown in the frame, and the watch goes on.
            if drawn == 0 {
                got.as_ref().map_err(|e| CliError::Failed(e.to_string()))?;
            }
            let mut out = std::io::stdout().lock();
            let r = if json {
                match &got {
                    Ok(s) => writeln!(out, "{}", status_json(s)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        Ok(())
                    }
                }
            } else {
                let body = match &got {
                    Ok(s) => render_status(s),
                    Err(e) => format!("error: {e}\n"),
                };
                let head = format!(
                    "every {every}: weir status{}  {}\n\n",
                    if tty { " (Ctrl-C to stop)" } else { "" },
                    rfc3339(crate::clock::now_ms())
                );
                let sep = match (tty, drawn) {
                    (true, _) => "\x1b[H\x1b[2J",
                    (false, 0) => "",
                    (false, _) => "\n",
                };
                write!(out, "{sep}{head}{body}")
            };
            match r.and_then(|()| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(CliError::Failed(format!("write to stdout: {e}"))),
                Ok(()) => {}
            }
            drawn += 1;
            if a.count.is_some_and(|n| drawn >= n) {
                return Ok(());
            }
        }
    };
    tokio::select! {
        r = frames => r,
        _ = &mut interrupted => Ok(()),
    }
}

async fn runners(c: &mut Client, json: bool) -> Result<(), CliError> {
    let r = c
        .list_runners(pb::ListRunnersRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        print_json(&json!({"runners": r.runners.iter().map(runner_json).collect::<Vec<_>>()}));
    } else {
        print!("{}", runner_table(&r.runners));
    }
    Ok(())
}

async fn attach(c: &mut Client, a: AttachArgs, json: bool) -> Result<(), CliError> {
    if !a.vm && a.netns.is_none() && a.pid.is_none() {
        return Err(CliError::Usage(
            "attach: give --netns PATH, --pid PID or --vm".into(),
        ));
    }
    let mut networks = a.networks.clone();
    if networks.is_empty() {
        networks.push(String::new());
    }
    if let Some(dup) = networks
        .iter()
        .enumerate()
        .find(|(i, n)| networks[..*i].contains(n))
    {
        return Err(CliError::Usage(format!(
            "attach: --network {:?} is given twice",
            dup.1
        )));
    }
    let mut done: Vec<pb::AttachWorkloadResponse> = Vec::new();
    for (i, network) in networks.iter().enumerate() {
        let first = i == 0;
        let result = c
            .attach_workload(pb::AttachWorkloadRequest {
                runner: a.runner.clone(),
                workload_id: a.id.clone(),
                netns: a.netns.clone().unwrap_or_default(),
                pid: a.pid.unwrap_or(0),
                network: network.clone(),
                labels: a.labels.iter().cloned().collect(),
                requested_ip: if first { a.ip.clone() } else { None }.unwrap_or_default(),
                reservation_token: if first { a.token.clone() } else { None }.unwrap_or_default(),
                kind: if a.vm {
                    pb::WorkloadKind::Vm
                } else {
                    pb::WorkloadKind::Container
                } as i32,
            })
            .await;
        match result {
            Ok(r) => done.push(r.into_inner()),
            Err(st) => {
                // Nothing half-applied: leave the networks this command joined.
                for r in done.iter().rev() {
                    let _ = c
                        .detach_workload(pb::DetachWorkloadRequest {
                            runner: r.runner.clone(),
                            workload_id: r.workload_id.clone(),
                            network: r.network.clone(),
                        })
                        .await;
                }
                return Err(refused(st));
            }
        }
    }
    if json {
        let items: Vec<serde_json::Value> = done.iter().map(attach_json).collect();
        let v = match items.as_slice() {
            [one] => one.clone(),
            _ => serde_json::Value::Array(items),
        };
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
    } else {
        for r in &done {
            println!(
                "attached {} on {} ({}): {} {} via {} mtu {}{}",
                r.workload_id,
                r.runner,
                r.network,
                r.ifname,
                r.ip,
                r.gateway,
                r.mtu,
                if r.mac.is_empty() {
                    String::new()
                } else {
                    format!(" mac {}", r.mac)
                }
            );
        }
    }
    Ok(())
}

async fn detach(c: &mut Client, a: DetachArgs, json: bool) -> Result<(), CliError> {
    let mut networks = a.networks.clone();
    if networks.is_empty() {
        // Every network the workload is on (or the primary one, for the host's own refusal).
        let listed = list_workloads(
            c,
            pb::ListWorkloadsRequest {
                runner: a.runner.clone().unwrap_or_default(),
                ..Default::default()
            },
        )
        .await?;
        networks = listed
            .into_iter()
            .filter(|w| w.workload_id == a.id)
            .map(|w| w.network)
            .collect();
        if networks.is_empty() {
            networks.push(String::new());
        }
    }
    let mut left = Vec::new();
    for network in networks {
        c.detach_workload(pb::DetachWorkloadRequest {
            runner: a.runner.clone().unwrap_or_default(),
            workload_id: a.id.clone(),
            network: network.clone(),
        })
        .await
        .map_err(refused)?;
        left.push(network);
    }
    if json {
        println!("{}", json!({"detached": a.id, "networks": left}));
    } else {
        println!("detached {}", a.id);
    }
    Ok(())
}

/// Every page of a listing.
async fn list_workloads(
    c: &mut Client,
    mut req: pb::ListWorkloadsRequest,
) -> Result<Vec<pb::Workload>, CliError> {
    let mut all = Vec::new();
    loop {
        let page = c
            .list_workloads(req.clone())
            .await
            .map_err(refused)?
            .into_inner();
        all.extend(page.workloads);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        if page.next_page_token == req.page_token {
            return Err(CliError::Failed(
                "the host returned the same page token twice; stopping".into(),
            ));
        }
        req.page_token = page.next_page_token;
    }
}

async fn workloads(c: &mut Client, a: WorkloadsArgs, json: bool) -> Result<(), CliError> {
    let workloads = list_workloads(
        c,
        pb::ListWorkloadsRequest {
            runner: a.runner.unwrap_or_default(),
            labels: a.labels.into_iter().collect(),
            network: a.network.unwrap_or_default(),
            page_size: a.page_size.unwrap_or(0),
            page_token: String::new(),
        },
    )
    .await?;
    if json {
        let list: Vec<Value> = workloads
            .iter()
            .map(|w| {
                json!({"id": w.workload_id, "runner": w.runner, "network": w.network, "ip": w.ip,
                       "kind": kind_name(w.kind), "netns": w.netns, "ifname": w.ifname,
                       "labels": w.labels, "mac": w.mac, "created_unix_ms": w.created_unix_ms,
                       "reservation_id": w.reservation_id, "origin": w.origin})
            })
            .collect();
        print_json(&json!({"workloads": list}));
        return Ok(());
    }
    let rows: Vec<[String; 8]> = workloads
        .iter()
        .map(|w| {
            let labels: BTreeMap<_, _> = w.labels.iter().collect();
            [
                w.workload_id.clone(),
                w.runner.clone(),
                w.network.clone(),
                w.ip.clone(),
                kind_name(w.kind).into(),
                w.ifname.clone(),
                w.origin.clone(),
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table(
            &[
                "WORKLOAD", "RUNNER", "NETWORK", "IP", "KIND", "IFNAME", "ORIGIN", "LABELS"
            ],
            &rows
        )
    );
    Ok(())
}

async fn reserve(c: &mut Client, a: ReserveArgs, json: bool) -> Result<(), CliError> {
    let r = c
        .reserve_address(pb::ReserveAddressRequest {
            runner: a.runner.clone(),
            ip: a.ip.unwrap_or_default(),
            ttl_seconds: a.ttl.unwrap_or(0),
            network: a.network.unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        println!(
            "{}",
            json!({"ip": r.ip, "token": r.token, "expires_at": rfc3339(r.expires_unix_ms),
                   "expires_unix_ms": r.expires_unix_ms, "reservation_id": r.reservation_id})
        );
    } else {
        println!(
            "reserved {} on {} until {} ({})\ntoken {}",
            r.ip,
            a.runner,
            rfc3339(r.expires_unix_ms),
            r.reservation_id,
            r.token
        );
    }
    Ok(())
}

async fn reservations(c: &mut Client, runner: Option<String>, json: bool) -> Result<(), CliError> {
    let r = c
        .list_reservations(pb::ListReservationsRequest {
            runner: runner.unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        let list: Vec<Value> = r
            .reservations
            .iter()
            .map(|x| {
                json!({"id": x.reservation_id, "runner": x.runner, "network": x.network, "ip": x.ip,
                       "state": x.state, "workload": x.workload_id,
                       "expires_at": rfc3339(x.expires_unix_ms), "expires_unix_ms": x.expires_unix_ms})
            })
            .collect();
        print_json(&json!({"reservations": list}));
        return Ok(());
    }
    let rows: Vec<[String; 6]> = r
        .reservations
        .iter()
        .map(|x| {
            [
                x.reservation_id.clone(),
                x.runner.clone(),
                x.ip.clone(),
                x.state.clone(),
                if x.workload_id.is_empty() {
                    "-".into()
                } else {
                    x.workload_id.clone()
                },
                rfc3339(x.expires_unix_ms),
            ]
        })
        .collect();
    print!(
        "{}",
        super::table(
            &[
                "RESERVATION",
                "RUNNER",
                "IP",
                "STATE",
                "WORKLOAD",
                "EXPIRES"
            ],
            &rows
        )
    );
    Ok(())
}

async fn release(c: &mut Client, a: ReleaseArgs, json: bool) -> Result<(), CliError> {
    if let Some(token) = a.token {
        c.release_reservation(pb::ReleaseReservationRequest { token })
            .await
            .map_err(refused)?;
        if json {
            println!("{}", json!({"released": "reservation"}));
        } else {
            println!("reservation released");
        }
    } else if let Some(runner) = a.runner {
        let r = c
            .release_runner(pb::ReleaseRunnerRequest {
                runner: runner.clone(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        if json {
            println!(
                "{}",
                json!({"released": runner, "id": r.released_id, "workloads_removed": r.workloads_removed})
            );
        } else {
            println!(
                "released {runner} (id {}, {} workloads removed)",
                r.released_id, r.workloads_removed
            );
        }
    }
    Ok(())
}

async fn cleanup(c: &mut Client, json: bool) -> Result<(), CliError> {
    let r = c
        .cleanup_inactive(pb::CleanupInactiveRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        println!("{}", json!({"released": r.released, "runners": r.runners}));
    } else {
        println!(
            "released {} inactive allocation(s){}",
            r.released,
            if r.runners.is_empty() {
                String::new()
            } else {
                format!(": {}", r.runners.join(", "))
            }
        );
    }
    Ok(())
}

async fn doctor(c: &mut Client, runner: Option<String>, json: bool) -> Result<(), CliError> {
    let r = c
        .diagnose(pb::DiagnoseRequest {
            runner: runner.unwrap_or_default(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if json {
        let findings: Vec<Value> = r
            .findings
            .iter()
            .map(|f| {
                json!({"runner": f.runner, "network": f.network, "workload": f.workload_id,
                       "kind": f.kind, "detail": f.detail})
            })
            .collect();
        println!("{}", json!({"checked": r.checked, "findings": findings}));
    } else if r.findings.is_empty() {
        println!(
            "no differences: the records match the kernel of {} runner(s) ({})",
            r.checked.len(),
            r.checked.join(", ")
        );
    } else {
        let rows: Vec<[String; 5]> = r
            .findings
            .iter()
            .map(|f| {
                [
                    f.runner.clone(),
                    f.network.clone(),
                    f.workload_id.clone(),
                    f.kind.clone(),
                    f.detail.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            super::table(
                &["RUNNER", "NETWORK", "WORKLOAD", "FINDING", "DETAIL"],
                &rows
            )
        );
    }
    if r.findings.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} difference(s) between the records and the kernel",
            r.findings.len()
        )))
    }
}

async fn watch(c: &mut Client, a: WatchArgs, json: bool) -> Result<(), CliError> {
    let mut stream = c
        .watch_events(pb::WatchEventsRequest {
            after: a.after,
            only_new: a.only_new,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut seen = 0u64;
    while let Some(e) = stream.message().await.map_err(refused)? {
        if json {
            println!("{}", event_json(&e));
        } else {
            let what = [
                e.runner.as_str(),
                e.workload_id.as_str(),
                e.ip.as_str(),
                e.reservation_id.as_str(),
                e.detail.as_str(),
            ]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
            println!(
                "{:>6} {} {:<20} {what}",
                e.seq,
                rfc3339(e.unix_ms),
                event_kind(e.kind)
            );
        }
        seen += 1;
        if a.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
