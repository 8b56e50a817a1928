//! The event log: every change in the cluster, numbered, retained (the last
//! [`EVENT_HISTORY`](super::EVENT_HISTORY), also across host restarts) and broadcast live.

use tokio::sync::broadcast;
use weir_proto::v1 as pb;

use super::{Hub, HubError};

/// The start of a watch: the retained events to replay, then the live feed.
pub struct Watch {
    pub backlog: Vec<pb::Event>,
    pub live: broadcast::Receiver<pb::Event>,
}

impl Hub {
    /// Replay events after `after` (unless `only_new`), then follow new ones. Subscribing
    /// under the state lock means no event falls between the replay and the live feed.
    pub async fn watch(&self, after: u64, only_new: bool) -> Result<Watch, HubError> {
        let st = self.state.lock().await;
        let live = self.events.subscribe();
        if only_new {
            return Ok(Watch {
                backlog: Vec::new(),
                live,
            });
        }
        if let Some(oldest) = st.history.front()
            && after > 0
            && oldest.seq > after + 1
        {
            return Err(HubError::FailedPrecondition(format!(
                "after: events {}..{} are no longer retained (the oldest is {}); resync from a status call and watch with only_new",
                after + 1,
                oldest.seq - 1,
                oldest.seq
            )));
        }
        let backlog = st
            .history
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        Ok(Watch { backlog, live })
    }
}
