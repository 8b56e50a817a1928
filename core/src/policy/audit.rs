//! The decision log: one JSON object per line for each plugin decision — hook, plugin,
//! version hash, mode, the input's SHA-256 (or the full input), the outcome, the latency and
//! the fault if any. `weir decisions` reads it.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Fault;
use crate::config::AuditLevel;
use crate::decision::{Decision, Request};

/// One line of the decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub ts_ms: i64,
    pub hook: String,
    pub call: String,
    pub plugin: String,
    pub version: String,
    /// `enforce` or `monitor`.
    pub mode: String,
    pub input_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub latency_us: u64,
    /// Whether this plugin's decision was applied.
    pub applied: bool,
    /// Monitor mode: whether the decision differs from the one applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differs: Option<bool>,
}

/// An open decision log.
#[derive(Clone)]
pub struct Audit {
    file: Arc<Mutex<File>>,
    level: AuditLevel,
    pub path: PathBuf,
}

impl Audit {
    /// Open (append) the log; `None` when the level is `off`.
    pub fn open(path: &Path, level: AuditLevel) -> std::io::Result<Option<Self>> {
        if level == AuditLevel::Off {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Some(Self {
            file: Arc::new(Mutex::new(file)),
            level,
            path: path.to_path_buf(),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        plugin: &str,
        version: &str,
        mode: &str,
        request: &Request,
        outcome: Result<&Decision, &Fault>,
        latency: Duration,
        applied: bool,
        differs: Option<bool>,
    ) {
        let input = serde_json::to_vec(request).unwrap_or_default();
        let entry = Entry {
            ts_ms: crate::clock::now_ms(),
            hook: request.hook().as_str().into(),
            call: request.call_name().into(),
            plugin: plugin.into(),
            version: version.into(),
            mode: mode.into(),
            input_digest: Sha256::digest(&input)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            input: (self.level == AuditLevel::Full)
                .then(|| serde_json::from_slice(&input).unwrap_or_default()),
            decision: outcome
                .ok()
                .map(|d| serde_json::to_value(d).unwrap_or_default()),
            fault: outcome.err().map(|f| f.to_string()),
            cause: outcome.err().map(|f| f.cause().to_string()),
            latency_us: latency.as_micros() as u64,
            applied,
            differs,
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::warn!(error = %e, log = %self.path.display(), "cannot write the decision log");
        }
    }
}

/// What `weir decisions` keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub hook: Option<String>,
    pub plugin: Option<String>,
    pub since_ms: Option<i64>,
}

/// Read the log, keeping entries that match `filter`. Malformed lines are skipped.
pub fn read(path: &Path, filter: &Filter) -> std::io::Result<Vec<Entry>> {
    let f = File::open(path)?;
    Ok(BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Entry>(&l).ok())
        .filter(|e| filter.hook.as_ref().is_none_or(|h| &e.hook == h))
        .filter(|e| filter.plugin.as_ref().is_none_or(|p| &e.plugin == p))
        .filter(|e| filter.since_ms.is_none_or(|s| e.ts_ms >= s))
        .collect())
}
