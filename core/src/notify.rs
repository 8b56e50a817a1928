//! Readiness and watchdog notifications with the systemd protocol (`NOTIFY_SOCKET`):
//! `Type=notify` units and the lab both wait for `READY=1` instead of guessing with sleeps, and a
//! unit with `WatchdogSec=` gets `WATCHDOG=1` every half period from the daemon's main loop.

use std::convert::Infallible;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET` if it is set. Failures are logged only:
/// a missing supervisor must never stop the daemon.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot notify the supervisor");
    }
}

/// Tell the supervisor the daemon is ready.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// The supervisor's watchdog, from `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be this
/// process when it is set, as `sd_watchdog_enabled` has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// How often to send `WATCHDOG=1`: half the supervisor's timeout.
    pub interval: Duration,
}

impl Watchdog {
    /// The watchdog this process was started with, if any. A malformed or zero `WATCHDOG_USEC`
    /// is logged and ignored (as a missing supervisor is).
    pub fn from_env() -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok()?;
        let pid = std::env::var("WATCHDOG_PID").ok();
        match Self::parse(&usec, pid.as_deref(), std::process::id()) {
            Ok(w) => w,
            Err(why) => {
                tracing::warn!(WATCHDOG_USEC = %usec, "ignoring the watchdog: {why}");
                None
            }
        }
    }

    fn parse(usec: &str, pid: Option<&str>, own: u32) -> Result<Option<Watchdog>, String> {
        if let Some(pid) = pid {
            let pid: u32 = pid
                .trim()
                .parse()
                .map_err(|_| format!("WATCHDOG_PID={pid:?} is not a process id"))?;
            if pid != own {
                // Meant for another process (a parent that did not unset it).
                return Ok(None);
            }
        }
        let usec: u64 = usec
            .trim()
            .parse()
            .map_err(|_| "not a number of microseconds".to_string())?;
        if usec == 0 {
            return Err("zero".into());
        }
        Ok(Some(Watchdog {
            interval: Duration::from_micros(usec / 2).max(Duration::from_millis(1)),
        }))
    }

    /// Tell the supervisor the daemon is alive.
    pub fn pet(&self) {
        notify("WATCHDOG=1");
    }

    /// Send `WATCHDOG=1` every [`Self::interval`], forever. Meant to be polled by the daemon's
    /// main loop itself (in its `select!`, never spawned): when that loop is stuck, the
    /// notifications stop and the supervisor restarts the daemon.
    pub async fn run(self) -> Infallible {
        let mut t = tokio::time::interval(self.interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            self.pet();
        }
    }
}

/// [`Watchdog::run`] when there is a watchdog; without one, a future that never resolves
/// (either way, something a daemon's loop can poll beside its work).
pub async fn keep_alive(w: Option<Watchdog>) -> Infallible {
    match w {
        Some(w) => w.run().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_period_and_only_for_this_pid() {
        let half = |d| Some(Watchdog { interval: d });
        assert_eq!(
            Watchdog::parse("30000000", None, 7),
            Ok(half(Duration::from_secs(15)))
        );
        assert_eq!(
            Watchdog::parse("30000000", Some("7"), 7),
            Ok(half(Duration::from_secs(15)))
        );
        assert_eq!(Watchdog::parse("30000000", Some("8"), 7), Ok(None));
        assert!(Watchdog::parse("0", None, 7).is_err());
        assert!(Watchdog::parse("30s", None, 7).is_err());
        assert!(Watchdog::parse("30000000", Some("x"), 7).is_err());
    }
}
