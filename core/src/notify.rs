//! Readiness notification with the systemd protocol (`NOTIFY_SOCKET`): `Type=notify` units and
//! the lab both wait for `READY=1` instead of guessing with sleeps.

use std::os::unix::net::UnixDatagram;

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
