//! The host's state store from its configuration (`[store]`), and `weir store`: copy a state
//! from one back end to another and check the copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::CliError;
use crate::config::schema::{StoreBackend, StoreConfig};
use crate::config::{Config, LoadedConfig};
use crate::store::{EtcdOptions, EtcdStore, RedbStore, Store};

/// Open the store `[store]` names: the redb file in `host.state_dir`, or etcd.
pub async fn open(c: &Config) -> Result<Arc<dyn Store>, CliError> {
    match c.store.backend {
        StoreBackend::Redb => Ok(Arc::new(
            RedbStore::open(&c.host.state_dir).map_err(|e| CliError::Failed(e.to_string()))?,
        )),
        StoreBackend::Etcd => Ok(open_etcd(c).await?),
    }
}

/// The etcd back end of `[store]`, writing as this host (`host.name`, or the hostname).
/// etcd that does not answer yet is waited for up to `store.resolve_timeout` (a host
/// started with, or just after, its etcd), then the error is the last one seen.
pub async fn open_etcd(c: &Config) -> Result<Arc<EtcdStore>, CliError> {
    let mut opts = etcd_options(&c.store)?;
    opts.writer = host_name(c);
    let deadline = std::time::Instant::now() + c.store.resolve_timeout.get();
    let mut warned = false;
    loop {
        match EtcdStore::connect(opts.clone()).await {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e @ crate::store::StoreError::Unavailable(_))
                if std::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(error = %e, "etcd does not answer yet; waiting for it (store.resolve_timeout)");
                    warned = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => return Err(CliError::Failed(e.to_string())),
        }
    }
}

/// This host's name: `host.name`, or the machine's hostname.
pub fn host_name(c: &Config) -> String {
    c.host.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into())
    })
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("{what} {}: {e}", path.display())))
}

/// `[store]` as the etcd back end's options (files read here, so a missing one is named).
pub fn etcd_options(s: &StoreConfig) -> Result<EtcdOptions, CliError> {
    let user = match (&s.username, &s.password_file) {
        (Some(u), Some(f)) => {
            let pw = String::from_utf8(read("store.password_file", f)?).map_err(|_| {
                CliError::Usage(format!("store.password_file {}: not UTF-8", f.display()))
            })?;
            Some((u.clone(), pw.trim_end_matches(['\n', '\r']).to_string()))
        }
        _ => None,
    };
    let tls_ca = s
        .tls_ca
        .as_deref()
        .map(|p| read("store.tls_ca", p))
        .transpose()?;
    let tls_identity = match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => Some((read("store.tls_cert", c)?, read("store.tls_key", k)?)),
        _ => None,
    };
    Ok(EtcdOptions {
        endpoints: s.endpoints.clone(),
        prefix: s.prefix.clone(),
        writer: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into()),
        user,
        tls_ca,
        tls_identity,
        timeout: s.timeout.get(),
        resolve_timeout: s.resolve_timeout.get(),
        max_txn_ops: s.max_txn_ops as usize,
    })
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the host's state from one back end into another (an empty one), then read both and
    /// compare them. Stop the host first: the copy is of a state nobody writes.
    Migrate(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Where to read: `redb` (the file in host.state_dir, or --state-dir) or `etcd` (the
    /// [store] settings).
    #[arg(long, value_enum)]
    pub from: BackendArg,
    /// Where to write: the other one. It must hold no Weir state yet.
    #[arg(long, value_enum)]
    pub to: BackendArg,
    /// The redb state directory (default: host.state_dir of the configuration).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print what would be copied and copy nothing (opening an empty target still stamps it
    /// with the schema version).
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Redb,
    Etcd,
}

pub fn run(cmd: StoreCommand, loaded: &LoadedConfig, json: bool) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    match cmd {
        StoreCommand::Migrate(a) => rt.block_on(migrate(a, loaded, json)),
    }
}

async fn open_backend(
    b: BackendArg,
    loaded: &LoadedConfig,
    state_dir: Option<&Path>,
) -> Result<Arc<dyn Store>, CliError> {
    let mut c = loaded.config.clone();
    if let Some(d) = state_dir {
        c.host.state_dir = d.to_path_buf();
    }
    c.store.backend = match b {
        BackendArg::Redb => StoreBackend::Redb,
        BackendArg::Etcd => StoreBackend::Etcd,
    };
    open(&c).await
}

async fn migrate(a: MigrateArgs, loaded: &LoadedConfig, json: bool) -> Result<(), CliError> {
    if a.from == a.to {
        return Err(CliError::Usage(
            "--from and --to name the same back end; nothing to copy".into(),
        ));
    }
    let failed = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let from = open_backend(a.from, loaded, a.state_dir.as_deref()).await?;
    let to = open_backend(a.to, loaded, a.state_dir.as_deref()).await?;
    let snap = from.load().await.map_err(failed)?;
    let target = to.load().await.map_err(failed)?;
    if !crate::store::copy::is_empty(&target) {
        return Err(CliError::Failed(format!(
            "{} already holds a Weir state ({}); refusing to overwrite it",
            to.describe(),
            crate::store::copy::summary(&target)
        )));
    }
    let summary = crate::store::copy::summary(&snap);
    if a.dry_run {
        print_result(
            json,
            "would copy",
            &from.describe(),
            &to.describe(),
            &summary,
        );
        return Ok(());
    }
    // Within what one commit of the target may carry (etcd's operations limit).
    let per_commit = to.max_changes().unwrap_or(usize::MAX);
    let commits = crate::store::copy::copy(&snap, to.as_ref(), per_commit)
        .await
        .map_err(failed)?;
    let copied = to.load().await.map_err(failed)?;
    crate::store::copy::same(&snap, &copied).map_err(|d| {
        CliError::Failed(format!(
            "the copy in {} differs from {}: {d}",
            to.describe(),
            from.describe()
        ))
    })?;
    tracing::debug!(commits, "state copied");
    print_result(
        json,
        "copied and checked",
        &from.describe(),
        &to.describe(),
        &summary,
    );
    Ok(())
}

fn print_result(json: bool, what: &str, from: &str, to: &str, summary: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({"result": what, "from": from, "to": to, "records": summary})
        );
    } else {
        println!("{what}: {from} → {to}: {summary}");
    }
}
