//! firewalld: when it runs and manages *this* network namespace, Weir's interfaces join its
//! `trusted` zone (runtime only, never the permanent configuration), so a host with firewalld
//! forwards overlay traffic. Probing costs one D-Bus round trip, once — not a `firewall-cmd`
//! process per tunnel.

use std::path::Path;

use zbus::Connection;
use zbus::fdo::DBusProxy;
use zbus::names::BusName;

const FIREWALLD: &str = "org.fedoraproject.FirewallD1";
const SYSTEM_BUS: &str = "/run/dbus/system_bus_socket";

/// A connection to a firewalld that manages our namespace, if there is one.
pub struct Firewalld {
    conn: Connection,
}

impl Firewalld {
    /// Find firewalld. `None` when there is no system bus, firewalld is not running, or it
    /// runs in another network namespace (then its zones are not ours to change).
    pub async fn detect() -> Option<Self> {
        if std::env::var_os("DBUS_SYSTEM_BUS_ADDRESS").is_none() && !Path::new(SYSTEM_BUS).exists()
        {
            return None;
        }
        let conn = Connection::system().await.ok()?;
        let dbus = DBusProxy::new(&conn).await.ok()?;
        let name = BusName::try_from(FIREWALLD).ok()?;
        if !dbus.name_has_owner(name.clone()).await.ok()? {
            return None;
        }
        let pid = dbus.get_connection_unix_process_id(name).await.ok()?;
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
        let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
        if theirs != ours {
            tracing::info!(
                pid,
                "firewalld runs in another network namespace; leaving its zones alone"
            );
            return None;
        }
        tracing::info!(
            pid,
            "firewalld manages this namespace; Weir's interfaces join its trusted zone"
        );
        Some(Self { conn })
    }

    /// Put `ifname` in the runtime `trusted` zone. Already being there is fine.
    pub async fn trust(&self, ifname: &str) {
        let r = self
            .conn
            .call_method(
                Some(FIREWALLD),
                "/org/fedoraproject/FirewallD1",
                Some("org.fedoraproject.FirewallD1.zone"),
                "addInterface",
                &("trusted", ifname),
            )
            .await;
        match r {
            Ok(_) => tracing::debug!(ifname, "interface in firewalld's trusted zone"),
            Err(e) if e.to_string().contains("ZONE_ALREADY_SET") => {}
            Err(e) => {
                tracing::warn!(ifname, error = %e, "firewalld refused to trust the interface")
            }
        }
    }
}
