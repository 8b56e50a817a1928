//! Fault points for the crash tests: named steps at which a test can have the daemon killed
//! (SIGKILL, as a power cut or the OOM killer would), to prove that every step leaves the
//! store, the kernel and the event log consistent after a restart.
//!
//! Compiled into debug builds only (the ones the tests run); in a release build [`hit`] is an
//! empty inline function. A test arms points with the environment variable
//! `WEIR_FAILPOINTS=NAME[@N][=ACTION][,…]`: the N-th time (default: the first) the daemon
//! reaches NAME it carries out ACTION: `kill` (the default: SIGKILL itself) or `delay:MS`
//! (block that task for MS milliseconds — a slow runner or a slow disk).

/// Reached a named step: die (or stall) here if a test armed it.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static ARMED: OnceLock<Mutex<HashMap<String, Armed>>> = OnceLock::new();
    let armed = ARMED
        .get_or_init(|| Mutex::new(parse(&std::env::var("WEIR_FAILPOINTS").unwrap_or_default())));
    let action = {
        let mut armed = armed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(a) = armed.get_mut(name) else {
            return;
        };
        a.left = a.left.saturating_sub(1);
        if a.left != 0 {
            return;
        }
        let action = a.action;
        armed.remove(name);
        action
    };
    match action {
        Action::Kill => {
            eprintln!("failpoint {name}: killing the process");
            // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, nothing runs after it.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Action::Delay(ms) => {
            eprintln!("failpoint {name}: stalling for {ms} ms");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

/// Release builds carry no fault points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}

#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Delay(u64),
}

#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    left: u64,
    action: Action,
}

/// `a,b@3=delay:50` → {a: kill at the first hit, b: a 50 ms stall at the third}. A malformed
/// count or action arms the default.
#[cfg(debug_assertions)]
fn parse(spec: &str) -> std::collections::HashMap<String, Armed> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (point, action) = match s.split_once('=') {
                Some((p, a)) => (p, a),
                None => (s, "kill"),
            };
            let (name, left) = match point.split_once('@') {
                Some((n, c)) => (n, c.parse().unwrap_or(1).max(1)),
                None => (point, 1),
            };
            let action = match action.strip_prefix("delay:") {
                Some(ms) => Action::Delay(ms.parse().unwrap_or(1000)),
                None => Action::Kill,
            };
            (name.to_string(), Armed { left, action })
        })
        .collect()
}

/// Every fault point, for the crash suite and the docs.
pub const POINTS: &[(&str, &str)] = &[
    (
        "hub.attach.before-send",
        "host: address and rules chosen, nothing sent or stored",
    ),
    (
        "hub.attach.after-send",
        "host: attach queued to the runner, no answer yet",
    ),
    (
        "hub.attach.after-answer",
        "host: the runner answered, nothing stored yet",
    ),
    (
        "hub.attach.after-commit",
        "host: record and event stored, the caller not answered",
    ),
    (
        "hub.detach.after-commit",
        "host: the detach stored, the runner not asked",
    ),
    (
        "hub.detach.after-answer",
        "host: the runner removed the interface, the caller not answered",
    ),
    (
        "hub.register.after-commit",
        "host: a runner's allocation stored, not answered",
    ),
    (
        "hub.reserve.after-commit",
        "host: a reservation stored, not answered",
    ),
    (
        "agent.attach.after-veth",
        "runner: the veth exists, nothing configured inside",
    ),
    (
        "agent.attach.before-answer",
        "runner: the interface is complete, the host not answered",
    ),
    (
        "agent.detach.before",
        "runner: a detach received, nothing removed",
    ),
    (
        "agent.sync.after-removals",
        "runner: a sync removed what it must, nothing restored yet",
    ),
];

#[cfg(all(test, debug_assertions))]
mod tests {
    #[test]
    fn specs_parse_with_counts_and_actions() {
        use super::{Action, Armed};
        let m = super::parse("a, b@3,c@x=delay:50,,d=delay:x");
        assert_eq!(
            m["a"],
            Armed {
                left: 1,
                action: Action::Kill
            }
        );
        assert_eq!(
            m["b"],
            Armed {
                left: 3,
                action: Action::Kill
            }
        );
        assert_eq!(
            m["c"],
            Armed {
                left: 1,
                action: Action::Delay(50)
            }
        );
        assert_eq!(
            m["d"],
            Armed {
                left: 1,
                action: Action::Delay(1000)
            }
        );
        assert_eq!(m.len(), 4);
    }
}
