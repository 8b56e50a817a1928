//! The event log: every change in the cluster, numbered, retained (the last
//! [`EVENT_HISTORY`](super::EVENT_HISTORY), also across host restarts) and broadcast live.
//!
//! Holds `Hub::watch`.

use std::collections::VecDeque;

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
        let backlog = replay(&st.history, st.next_event.saturating_sub(1), after)?;
        Ok(Watch { backlog, live })
    }
}

/// The retained events after `after`, given the `history` (oldest first) and the sequence
/// number of the `last` event ever recorded (0: none yet). An `after` beyond `last` is
/// OUT_OF_RANGE (such a watcher would wait for numbers the host has not reached, e.g. after a
/// wiped state); one before the oldest retained event is FAILED_PRECONDITION.
fn replay(
    history: &VecDeque<pb::Event>,
    last: u64,
    after: u64,
) -> Result<Vec<pb::Event>, HubError> {
    if after > last {
        return Err(HubError::OutOfRange(format!(
            "after: {after} is beyond the last event, {last}; watch with after at most {last} (or only_new)"
        )));
    }
    if let Some(oldest) = history.front()
        && after > 0
        && oldest.seq.saturating_sub(1) > after
    {
        return Err(HubError::FailedPrecondition(format!(
            "after: events {}..{} are no longer retained (the oldest is {}); resync from a status call and watch with after set to its last_event_seq",
            after + 1,
            oldest.seq.saturating_sub(1),
            oldest.seq
        )));
    }
    Ok(history.iter().filter(|e| e.seq > after).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(seqs: std::ops::RangeInclusive<u64>) -> VecDeque<pb::Event> {
        seqs.map(|seq| pb::Event {
            seq,
            ..Default::default()
        })
        .collect()
    }

    #[test]
    fn an_after_beyond_the_last_event_is_out_of_range_without_overflow() {
        let h = history(5..=9);
        for after in [10, 1 << 40, u64::MAX - 1, u64::MAX] {
            match replay(&h, 9, after) {
                Err(HubError::OutOfRange(m)) => {
                    assert!(m.contains("the last event, 9"), "{m}")
                }
                other => panic!("after {after}: {:?}", other.map(|v| v.len())),
            }
        }
        // No event yet: only 0 is in range.
        assert!(matches!(
            replay(&VecDeque::new(), 0, u64::MAX),
            Err(HubError::OutOfRange(_))
        ));
        assert!(replay(&VecDeque::new(), 0, 0).unwrap().is_empty());
    }

    #[test]
    fn replay_returns_what_follows_after_within_the_history() {
        let h = history(5..=9);
        assert!(replay(&h, 9, 9).unwrap().is_empty());
        let seqs = |v: Vec<pb::Event>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(replay(&h, 9, 6).unwrap()), [7, 8, 9]);
        assert_eq!(seqs(replay(&h, 9, 4).unwrap()), [5, 6, 7, 8, 9]);
        assert_eq!(seqs(replay(&h, 9, 0).unwrap()).len(), 5);
        assert!(matches!(
            replay(&h, 9, 3),
            Err(HubError::FailedPrecondition(_))
        ));
    }
}
