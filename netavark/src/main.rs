//! `weir-netavark`: Weir's netavark plugin (netavark ≥ 1.6, so podman ≥ 4.5 with the netavark
//! backend). netavark executes it per operation (`create`, `setup NETNS`, `teardown NETNS`,
//! `info`) with JSON on stdin; it asks the runner on this machine over its local socket
//! (`weir.v1.Local`) and prints netavark's answer, or `{"error": "…"}` with exit status 1.
//! The runner relays to the host: the container gets its address from the same plan, IPAM and
//! policy as every other Weir workload, recorded with the origin `netavark/<network name>`.
//!
//! Network options: `socket` (the runner's local socket, default `/run/weir/runner.sock`),
//! `weir.network` (the Weir network; default the primary one), `weir.label.KEY` (a label of
//! every container). Container options (`--network NAME:OPT=VALUE`): `weir.reservation` (a
//! reservation token; else `WEIR_RESERVATION` in the environment) and `weir.label.KEY`.
//! `static_ips` (`--ip`) asks for an address.

mod api;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use weir_proto::v1::local_client::LocalClient;

use api::Error;

/// How long to wait for the runner to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take (an attach waits for the host and then the runner's kernel).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = run(&args);
    let mut out = std::io::stdout().lock();
    let status = match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(status);
}

fn stdin() -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Error::Input(format!("read: {e}")))?;
    Ok(buf)
}

fn run(args: &[String]) -> Result<Option<Value>, Error> {
    let netns = || {
        args.get(1)
            .cloned()
            .ok_or_else(|| Error::Usage(format!("{} needs the namespace path", args[0])))
    };
    match args.first().map(String::as_str) {
        // netavark runs a plugin without arguments for its info, too.
        None | Some("info") => Ok(Some(api::info())),
        Some("create") => api::create(&stdin()?).map(Some),
        Some("setup") => {
            let netns = netns()?;
            let exec = api::PluginExec::parse(&stdin()?)?;
            let token = std::env::var("WEIR_RESERVATION").ok();
            let (conf, req) = api::attach_request(&exec, &netns, token)?;
            let r = block_on(async {
                let mut c = connect(&conf.socket).await?;
                c.attach(req)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|st| refused("attach", &st))
            })?;
            let status = api::status_block(&r)?;
            serde_json::to_value(status)
                .map(Some)
                .map_err(|e| Error::Internal(format!("write the status block: {e}")))
        }
        Some("teardown") => {
            let netns = netns()?;
            let exec = api::PluginExec::parse(&stdin()?)?;
            let (conf, req) = api::detach_request(&exec, &netns)?;
            block_on(async {
                let mut c = connect(&conf.socket).await?;
                // Not attached is fine (the runner says so): teardown may run twice.
                c.detach(req)
                    .await
                    .map_err(|st| refused("detach", &st))
                    .map(|_| None)
            })
        }
        Some(other) => Err(Error::Usage(format!("unknown subcommand {other:?}"))),
    }
}

fn block_on<T>(f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("start the runtime: {e}")))?
        .block_on(f)
}

async fn connect(socket: &str) -> Result<LocalClient<Channel>, Error> {
    let unreachable = |cause: String| Error::Unreachable {
        socket: socket.to_string(),
        cause,
    };
    let channel = Endpoint::from_shared(format!("unix://{socket}"))
        .map_err(|e| unreachable(format!("not a usable path: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
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

/// A refusal from the runner or host, saying whether trying again may help.
fn refused(what: &'static str, st: &tonic::Status) -> Error {
    let kind = match st.code() {
        Code::Unavailable | Code::DeadlineExceeded => "try again later".to_string(),
        // The connection to the runner broke mid-call (it stopped or restarted).
        Code::Unknown if std::error::Error::source(st).is_some() => {
            format!(
                "the runner's connection broke: {}; try again later",
                error_chain(st)
            )
        }
        c => format!("weir: {c:?}"),
    };
    Error::Refused {
        what,
        message: st.message().to_string(),
        kind,
    }
}
