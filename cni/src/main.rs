//! `weir-cni`: Weir's CNI 1.1 plugin. A runtime (podman, containerd, libcni) executes it once per
//! operation with the spec's environment and the network configuration on stdin; it asks the
//! runner on this machine, over its local socket (`weir.v1.Local`), and prints the spec's result
//! or error object. The runner relays to the host: the container gets its address from the same
//! plan, IPAM and policy as every other Weir workload.
//!
//! Configuration keys besides the spec's: `socket` (the runner's local socket, default
//! `/run/weir/runner.sock`), `network` (the Weir network; default the primary one) and `labels`
//! (an object of strings). `CNI_ARGS` may carry `IP=` (an address to ask for) and
//! `WEIR_RESERVATION=` (a reservation token; the variable of that name in the plugin's own
//! environment does too, which is how podman users pass one); `runtimeConfig.ips` and `args.cni.ips` ask for an
//! address, `args.cni.labels` adds labels, and Kubernetes' `K8S_POD_NAMESPACE`/`K8S_POD_NAME`
//! become the labels `io.kubernetes.pod.namespace`/`io.kubernetes.pod.name`.

mod spec;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use weir_proto::v1 as pb;
use weir_proto::v1::local_client::LocalClient;

use spec::{Attached, CniError, Command, Env, NetConf, Result, code};

/// How long to wait for the runner to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take (an attach waits for the host and then the runner's kernel).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let conf = NetConf::parse(&stdin).ok();
    // Errors are written in the configuration's version when it names one we speak.
    let version = conf
        .as_ref()
        .and_then(|c| c.version().ok().map(str::to_string))
        .unwrap_or_else(|| spec::NEWEST.to_string());
    let outcome = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(
            code::IO_FAILURE,
            format!("read the network configuration from stdin: {e}"),
        )),
    };
    let mut out = std::io::stdout().lock();
    let status = match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(status);
}

fn run(stdin: &[u8]) -> Result<Option<Value>> {
    let command = Command::parse(&std::env::var("CNI_COMMAND").unwrap_or_default())?;
    if command == Command::Version {
        // The configuration (if any) only names the version the caller speaks.
        let asked = NetConf::parse(stdin)
            .ok()
            .map(|c| c.cni_version)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| spec::NEWEST.to_string());
        return Ok(Some(json!({
            "cniVersion": asked,
            "supportedVersions": spec::SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    conf.version()?;
    let env = Env::read(|k| std::env::var(k).ok())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("start the runtime: {e}")))?;
    rt.block_on(async {
        match command {
            Command::Add => add(&conf, &env).await.map(Some),
            Command::Del => del(&conf, &env).await.map(|()| None),
            Command::Check => check(&conf, &env).await.map(|()| None),
            Command::Gc => gc(&conf).await.map(|()| None),
            Command::Status => status(&conf).await.map(|()| None),
            // Answered above, before connecting.
            Command::Version => Ok(None),
        }
    })
}

async fn connect(conf: &NetConf, unreachable: u32) -> Result<LocalClient<Channel>> {
    let url = format!("unix://{}", conf.socket);
    let ep = Endpoint::from_shared(url.clone())
        .map_err(|e| {
            CniError::new(
                code::INVALID_NETWORK_CONFIG,
                format!("socket: {:?} is not a usable path: {e}", conf.socket),
            )
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let channel = ep.connect().await.map_err(|e| {
        CniError::new(
            unreachable,
            format!(
                "the Weir runner does not answer at {} (is `weir runner` running?)",
                conf.socket
            ),
        )
        .with_details(error_chain(&e))
    })?;
    Ok(LocalClient::new(channel))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A refusal from the runner or host as a CNI error: "try again later" for what passes
/// (no session, a restart, a timeout), the spec's codes where one fits, else Weir's own.
fn refused(what: &str, st: tonic::Status) -> CniError {
    let code = match st.code() {
        // A runner's own refusal (ABORTED: a namespace it may not touch, a default route it
        // will not take) stays a refusal; only what passes is worth a retry.
        Code::Unavailable | Code::DeadlineExceeded => code::TRY_AGAIN_LATER,
        // The connection to the runner broke mid-call (the runner stopped or restarted):
        // tonic reports that as UNKNOWN with the transport's error as its source.
        Code::Unknown if std::error::Error::source(&st).is_some() => code::TRY_AGAIN_LATER,
        Code::InvalidArgument => code::INVALID_NETWORK_CONFIG,
        _ => code::REFUSED,
    };
    CniError::new(code, format!("{what}: {}", st.message()))
        .with_details(format!("weir: {:?}", st.code()))
}

/// The workload id of a container: its id as the runtime gives it.
fn workload_id(env: &Env) -> Result<String> {
    let id = env.require("CNI_CONTAINERID", &env.container_id)?;
    let ok = id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(id.to_string())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_CONTAINERID: must be at most 128 letters, digits, '.', '_' or '-'",
        ))
    }
}

/// What `CNI_ARGS` asks for: an address, a reservation, Kubernetes' pod labels.
#[derive(Default)]
struct Asked {
    ip: Option<String>,
    reservation: Option<String>,
    labels: Vec<(String, String)>,
}

fn asked(env: &Env) -> Result<Asked> {
    let ignore_unknown = env
        .args
        .iter()
        .any(|(k, v)| k == "IgnoreUnknown" && matches!(v.as_str(), "1" | "true" | "True"));
    let mut a = Asked::default();
    for (k, v) in &env.args {
        match k.as_str() {
            "IgnoreUnknown" => {}
            "IP" => a.ip = Some(v.clone()),
            "WEIR_RESERVATION" => a.reservation = Some(v.clone()),
            "K8S_POD_NAMESPACE" => a
                .labels
                .push(("io.kubernetes.pod.namespace".into(), v.clone())),
            "K8S_POD_NAME" => a.labels.push(("io.kubernetes.pod.name".into(), v.clone())),
            "K8S_POD_INFRA_CONTAINER_ID" | "K8S_POD_UID" => {}
            _ if ignore_unknown => {}
            other => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!(
                        "CNI_ARGS: {other} is not understood (IP, WEIR_RESERVATION, K8S_POD_*; set IgnoreUnknown=1 to pass others)"
                    ),
                ));
            }
        }
    }
    Ok(a)
}

async fn add(conf: &NetConf, env: &Env) -> Result<Value> {
    let version = conf.version()?.to_string();
    let workload_id = workload_id(env)?;
    let netns = env.require("CNI_NETNS", &env.netns)?.to_string();
    let ifname = env.require("CNI_IFNAME", &env.ifname)?.to_string();
    let mut args = asked(env)?;
    // podman passes its own environment to CNI plugins and has no other way to hand one a
    // token: `WEIR_RESERVATION=… podman run --network …`.
    if args.reservation.is_none() {
        args.reservation = std::env::var("WEIR_RESERVATION")
            .ok()
            .filter(|t| !t.trim().is_empty());
    }
    let mut ips: Vec<String> = conf
        .ips
        .iter()
        .map(|ip| ip.split('/').next().unwrap_or(ip).to_string())
        .collect();
    ips.extend(args.ip.clone());
    ips.dedup();
    if ips.len() > 1 {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            format!(
                "ips: one IPv4 address per interface, not {}",
                ips.join(", ")
            ),
        ));
    }
    let mut labels = conf.labels.clone();
    labels.extend(args.labels);
    let mut client = connect(conf, code::TRY_AGAIN_LATER).await?;
    let r = client
        .attach(pb::LocalAttachRequest {
            origin: conf.origin()?,
            workload_id: workload_id.clone(),
            netns: netns.clone(),
            network: conf.network.clone(),
            labels: labels.into_iter().collect(),
            requested_ip: ips.pop().unwrap_or_default(),
            reservation_token: args.reservation.unwrap_or_default(),
            ifname: ifname.clone(),
            ..Default::default()
        })
        .await
        .map_err(|st| refused("attach", st))?
        .into_inner();
    let ours = spec::result(
        &version,
        &Attached {
            host_ifname: r.host_ifname,
            host_mac: r.host_mac,
            ifname: r.ifname,
            mac: r.mac,
            sandbox: netns,
            address: r.ip,
            gateway: r.gateway,
            mtu: r.mtu,
            default_route: r.default_route,
            dns: r.dns,
        },
    );
    Ok(match &conf.prev_result {
        Some(prev) => merge(prev, ours, &version),
        None => ours,
    })
}

/// Chained after another plugin: its interfaces, addresses and routes come first, ours after
/// (our addresses' interface indexes shifted past its interfaces).
fn merge(prev: &Value, ours: Value, version: &str) -> Value {
    let mut out = prev.clone();
    out["cniVersion"] = Value::String(version.to_string());
    let list = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list(prev, "interfaces");
    let shift = interfaces.len() as u64;
    interfaces.extend(list(&ours, "interfaces"));
    let mut ips = list(prev, "ips");
    for mut ip in list(&ours, "ips") {
        if let Some(k) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = json!(k + shift);
        }
        ips.push(ip);
    }
    let mut routes = list(prev, "routes");
    routes.extend(list(&ours, "routes"));
    out["interfaces"] = Value::Array(interfaces);
    out["ips"] = Value::Array(ips);
    out["routes"] = Value::Array(routes);
    if out
        .get("dns")
        .is_none_or(|d| d.as_object().is_none_or(|o| o.is_empty()))
    {
        out["dns"] = ours.get("dns").cloned().unwrap_or(json!({}));
    }
    out
}

async fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let workload_id = workload_id(env)?;
    let mut client = connect(conf, code::TRY_AGAIN_LATER).await?;
    client
        .detach(pb::LocalDetachRequest {
            workload_id,
            network: conf.network.clone(),
        })
        .await
        .map_err(|st| refused("detach", st))?;
    Ok(())
}

async fn check(conf: &NetConf, env: &Env) -> Result<()> {
    let workload_id = workload_id(env)?;
    let ifname = env.require("CNI_IFNAME", &env.ifname)?;
    let mut client = connect(conf, code::TRY_AGAIN_LATER).await?;
    let w = client
        .check(pb::LocalCheckRequest {
            workload_id: workload_id.clone(),
            network: conf.network.clone(),
        })
        .await
        .map_err(|st| match st.code() {
            Code::NotFound => {
                CniError::new(code::UNKNOWN_CONTAINER, format!("check: {}", st.message()))
            }
            _ => refused("check", st),
        })?
        .into_inner()
        .workload
        .unwrap_or_default();
    if w.ifname != ifname {
        return Err(CniError::new(
            code::REFUSED,
            format!(
                "check: {workload_id} is attached as {}, not {ifname}",
                w.ifname
            ),
        ));
    }
    if let Some(prev) = &conf.prev_result {
        let addr = w.ip.split('/').next().unwrap_or(&w.ip).to_string();
        let listed = spec::prev_addresses(prev, ifname);
        if !listed.contains(&addr) {
            return Err(CniError::new(
                code::REFUSED,
                format!(
                    "check: {workload_id} holds {addr}, but the previous result gives {ifname} {}",
                    if listed.is_empty() {
                        "no address".to_string()
                    } else {
                        listed.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

async fn gc(conf: &NetConf) -> Result<()> {
    let keep = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "cni.dev/valid-attachments: GC needs the list of attachments to keep",
        )
    })?;
    let mut client = connect(conf, code::TRY_AGAIN_LATER).await?;
    let listed = client
        .list(pb::LocalListRequest {
            origin: conf.origin()?,
        })
        .await
        .map_err(|st| refused("list", st))?
        .into_inner()
        .workloads;
    let mut failed = Vec::new();
    for w in listed {
        if keep
            .iter()
            .any(|(c, i)| *c == w.workload_id && *i == w.ifname)
        {
            continue;
        }
        if let Err(st) = client
            .detach(pb::LocalDetachRequest {
                workload_id: w.workload_id.clone(),
                network: w.network.clone(),
            })
            .await
        {
            failed.push(format!("{}: {}", w.workload_id, st.message()));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("gc: {} attachment(s) not removed", failed.len()),
        )
        .with_details(failed.join("; ")))
    }
}

async fn status(conf: &NetConf) -> Result<()> {
    let mut client = connect(conf, code::NOT_AVAILABLE).await?;
    let s = client
        .status(pb::LocalStatusRequest {})
        .await
        .map_err(|st| CniError::new(code::NOT_AVAILABLE, format!("status: {}", st.message())))?
        .into_inner();
    if s.ready {
        Ok(())
    } else {
        Err(CniError::new(code::NOT_AVAILABLE, s.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chained_add_appends_after_the_previous_result() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "net1", "sandbox": "/n"}],
            "ips": [{"address": "192.0.2.5/24", "interface": 2}],
            "routes": [{"dst": "192.0.2.0/24"}],
            "dns": {"nameservers": ["192.0.2.53"]},
        });
        let ours = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "wk1"}, {"name": "eth0", "sandbox": "/n"}],
            "ips": [{"address": "10.128.64.2/18", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.128.64.1"}],
            "dns": {"nameservers": ["10.0.0.53"]},
        });
        let m = merge(&prev, ours, "1.1.0");
        assert_eq!(m["cniVersion"], "1.1.0");
        assert_eq!(m["interfaces"].as_array().unwrap().len(), 5);
        assert_eq!(
            m["ips"][0]["interface"], 2,
            "the previous plugin's address keeps its index"
        );
        assert_eq!(
            m["ips"][1]["interface"], 4,
            "ours points at our eth0, after theirs"
        );
        assert_eq!(m["interfaces"][4]["name"], "eth0");
        assert_eq!(m["routes"].as_array().unwrap().len(), 2);
        assert_eq!(
            m["dns"]["nameservers"][0], "192.0.2.53",
            "their DNS is kept"
        );
    }
}
