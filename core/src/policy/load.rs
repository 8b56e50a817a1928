//! Loading one plugin version: compile and instantiate a WebAssembly component per hook, or
//! connect and configure a gRPC plugin; why that failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Limits, grpc, wasm};
use crate::config::PluginConfig;
use crate::decision::Hook;

/// What serves a plugin's decisions: a component instance per hook, or a gRPC service.
#[derive(Clone)]
pub(super) enum Backend {
    Wasm(BTreeMap<Hook, Arc<wasm::WasmPlugin>>),
    Grpc(Arc<grpc::GrpcPlugin>),
}

pub(super) struct Loaded {
    pub(super) backend: Backend,
    pub(super) version: String,
    pub(super) loaded_ms: i64,
    /// File identity at load (size, mtime) for change detection.
    pub(super) stamp: Option<(u64, std::time::SystemTime)>,
}

/// Why one plugin (or a new version of it) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error(transparent)]
    Wasm(#[from] wasm::LoadError),
    #[error(transparent)]
    Grpc(#[from] grpc::ConnectError),
    #[error("load task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("neither path nor endpoint")]
    NoSource,
}

pub(super) async fn load_one(
    spec: &PluginConfig,
    hooks: &[Hook],
    limits: Limits,
    cache_dir: Option<PathBuf>,
) -> Result<Loaded, PluginLoadError> {
    let config: Vec<(String, String)> = spec
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let now = crate::clock::now_ms();
    if let Some(path) = &spec.path {
        let (path, name, hooks) = (path.clone(), spec.name.clone(), hooks.to_vec());
        let stamp = file_stamp(&path);
        let (by_hook, version) =
            tokio::task::spawn_blocking(move || -> Result<_, wasm::LoadError> {
                let compiled = wasm::compile(&path, cache_dir.as_deref())?;
                // One instance family per hook: a component serving several hooks implements
                // several worlds' exports.
                let mut by_hook = BTreeMap::new();
                for h in &hooks {
                    let p =
                        wasm::WasmPlugin::new(&name, &path, &compiled, *h, limits, config.clone())?;
                    by_hook.insert(*h, Arc::new(p));
                }
                Ok((by_hook, compiled.version))
            })
            .await??;
        return Ok(Loaded {
            backend: Backend::Wasm(by_hook),
            version,
            loaded_ms: now,
            stamp,
        });
    }
    let endpoint = spec.endpoint.clone().ok_or(PluginLoadError::NoSource)?;
    let g = grpc::GrpcPlugin::connect(&spec.name, &endpoint, &config, limits.deadline).await?;
    Ok(Loaded {
        backend: Backend::Grpc(Arc::new(g)),
        version: "grpc".into(),
        loaded_ms: now,
        stamp: None,
    })
}

pub(super) fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.len(), md.modified().ok()?))
}
