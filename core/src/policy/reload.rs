//! Hot reload: a plugin whose file changed is loaded again beside the working version and
//! swapped in atomically; a broken new version never replaces a working one.

use std::sync::Arc;
use std::time::Duration;

use super::host::{PolicyHost, ReloadOutcome, Slot};
use super::load::{Loaded, file_stamp, load_one};

impl PolicyHost {
    /// Reload every plugin whose source changed (or all, with `force`). A version that fails to
    /// load leaves the working one in place.
    pub async fn reload(&self, force: bool) -> Vec<ReloadOutcome> {
        let mut out = Vec::new();
        for slot in &self.slots {
            let current = slot
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let outcome = match &slot.spec.path {
                None => ReloadOutcome {
                    name: slot.spec.name.clone(),
                    result: "unchanged",
                    version: current.version.clone(),
                    error: String::new(),
                },
                Some(path) => {
                    let stamp = file_stamp(path);
                    if !force && stamp.is_some() && stamp == current.stamp {
                        ReloadOutcome {
                            name: slot.spec.name.clone(),
                            result: "unchanged",
                            version: current.version.clone(),
                            error: String::new(),
                        }
                    } else {
                        self.reload_wasm(slot, &current).await
                    }
                }
            };
            if outcome.result != "unchanged"
                && let Some(tx) = &self.reloads
            {
                let _ = tx.send(outcome.clone());
            }
            out.push(outcome);
        }
        out
    }

    async fn reload_wasm(&self, slot: &Arc<Slot>, current: &Arc<Loaded>) -> ReloadOutcome {
        let name = slot.spec.name.clone();
        match load_one(&slot.spec, &slot.hooks, slot.limits, self.cache_dir.clone()).await {
            Ok(new) if new.version == current.version => {
                // Same bytes (e.g. touched): keep the warm instances, remember the new stamp.
                let same = Loaded {
                    backend: current.backend.clone(),
                    version: current.version.clone(),
                    loaded_ms: current.loaded_ms,
                    stamp: new.stamp,
                };
                *slot.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(same);
                slot.last_error
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                ReloadOutcome {
                    name,
                    result: "unchanged",
                    version: current.version.clone(),
                    error: String::new(),
                }
            }
            Ok(new) => {
                let version = new.version.clone();
                // The swap: in-flight decisions finish on the old version they hold.
                *slot.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                slot.last_error
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                tracing::info!(plugin = %name, from = %current.version, to = %version, "policy plugin reloaded");
                ReloadOutcome {
                    name,
                    result: "reloaded",
                    version,
                    error: String::new(),
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(plugin = %name, error = %reason, version = %current.version, "reload failed; the working version stays");
                *slot.last_error.write().unwrap_or_else(|p| p.into_inner()) = reason.clone();
                ReloadOutcome {
                    name,
                    result: "failed",
                    version: current.version.clone(),
                    error: reason,
                }
            }
        }
    }

    /// Watch plugin files and reload on change, every `interval`, until the host stops.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if !self.slots.iter().any(|s| s.spec.path.is_some()) {
            return;
        }
        let host = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(h) = host.upgrade() else { return };
                h.reload(false).await;
            }
        });
    }
}
