//! Copying a whole state from one back end into another (`weir store migrate`), and
//! comparing two states record by record.

use super::{Change, Commit, Snapshot, Store, StoreError};

/// Whether a state holds nothing of a hub (a fresh store).
pub fn is_empty(s: &Snapshot) -> bool {
    s.runners.is_empty()
        && s.placeholders.is_empty()
        && s.workloads.is_empty()
        && s.reservations.is_empty()
        && s.events.is_empty()
        && s.meta.is_empty()
}

/// "3 runners, 0 placeholders, …" for messages.
pub fn summary(s: &Snapshot) -> String {
    format!(
        "{} runners, {} placeholders, {} workloads, {} reservations, {} events, {} meta keys",
        s.runners.len(),
        s.placeholders.len(),
        s.workloads.len(),
        s.reservations.len(),
        s.events.len(),
        s.meta.len()
    )
}

/// Write every record of `s` into `to`, at most `per_commit` changes per commit (each commit
/// whole; a failure leaves the target partly written, and it must be emptied before another
/// try). Returns how many commits it took.
pub async fn copy(s: &Snapshot, to: &dyn Store, per_commit: usize) -> Result<usize, StoreError> {
    let mut changes: Vec<Change> = Vec::new();
    changes.extend(s.runners.values().cloned().map(Change::PutRunner));
    changes.extend(s.placeholders.values().cloned().map(Change::PutPlaceholder));
    // Reservations before the workloads that use them (they share the address's claim).
    changes.extend(s.reservations.values().cloned().map(Change::PutReservation));
    changes.extend(s.workloads.values().cloned().map(Change::PutWorkload));
    changes.extend(s.events.iter().map(|e| Change::PutEvent {
        seq: e.seq,
        bytes: e.bytes.clone(),
        trim_below: 0,
    }));
    changes.extend(
        s.meta
            .iter()
            .map(|(k, v)| Change::PutMeta(k.clone(), v.clone())),
    );
    let mut commits = 0;
    for chunk in changes.chunks(per_commit.max(1)) {
        to.commit(Commit::new(chunk.to_vec())).await?;
        commits += 1;
    }
    Ok(commits)
}

/// `Ok` when both states hold the same records, events and meta (revisions differ by nature);
/// otherwise the first difference.
pub fn same(a: &Snapshot, b: &Snapshot) -> Result<(), String> {
    fn diff<K: Ord + std::fmt::Debug, V: PartialEq>(
        what: &str,
        a: &std::collections::BTreeMap<K, V>,
        b: &std::collections::BTreeMap<K, V>,
    ) -> Result<(), String> {
        for (k, v) in a {
            match b.get(k) {
                None => return Err(format!("{what} {k:?} is missing")),
                Some(w) if w != v => return Err(format!("{what} {k:?} differs")),
                _ => {}
            }
        }
        if let Some(k) = b.keys().find(|k| !a.contains_key(k)) {
            return Err(format!("{what} {k:?} is extra"));
        }
        Ok(())
    }
    diff("runner", &a.runners, &b.runners)?;
    diff("placeholder", &a.placeholders, &b.placeholders)?;
    diff("workload", &a.workloads, &b.workloads)?;
    diff("reservation", &a.reservations, &b.reservations)?;
    diff("meta key", &a.meta, &b.meta)?;
    if a.events != b.events {
        return Err(format!(
            "events differ ({} against {})",
            a.events.len(),
            b.events.len()
        ));
    }
    Ok(())
}
