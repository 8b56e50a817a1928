//! Gratuitous ARP: a workload interface whose address was another's on this runner announces
//! its address and MAC once it is up, so neighbours that cached the address with another MAC
//! (the interface of a workload that held it before: the host, the bridge's other workloads,
//! peer runners) update at once instead of sending to the old MAC until their entry goes stale
//! (about 30 s). Fresh addresses are not announced (`WorkloadIface::announce`): the broadcast
//! reaches every workload on the bridge.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;

/// A packet socket for ARP. Closing one waits for an RCU grace period (`packet_release` →
/// `synchronize_net`: milliseconds on a busy machine), so it is closed on a blocking thread,
/// never on the async runtime where it would hold up every other attach.
pub struct Socket(Option<OwnedFd>);

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || drop(fd));
                }
                Err(_) => drop(fd),
            }
        }
    }
}

/// A packet socket for ARP, opened in the calling thread's network namespace.
pub fn socket() -> io::Result<Socket> {
    raw_socket().map(|fd| Socket(Some(fd)))
}

fn raw_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned value.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            // Protocol 0: send only. A protocol would hook the socket into the receive path
            // of the namespace (a copy of every ARP packet) until it is closed.
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The ARP request announcing `ip` at `mac` (sender and target address both `ip`).
pub fn packet(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address zero, target protocol address our own.
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// Broadcast the announcement out of interface `ifindex` (of the socket's namespace).
pub fn announce(sock: &Socket, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let Some(fd) = &sock.0 else {
        return Err(io::Error::other("the socket is closed"));
    };
    let p = packet(mac, ip);
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are what AF_PACKET reads.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `p` and `to` outlive the call; the lengths are theirs.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            p.as_ptr().cast(),
            p.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How long after the first announcement the second one goes out. The first can be lost: it
/// is sent as soon as the interface is up, and its bridge port may start forwarding only
/// after the kernel's link watch has run (RFC 5227 likewise announces twice).
const REANNOUNCE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Announce now, and once more after [`REANNOUNCE_AFTER`] in the background (the socket is
/// held until then). Returns the first send's outcome; the second is best effort (the
/// interface may be gone by then, which is fine).
pub fn announce_twice(sock: Socket, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let first = announce(&sock, ifindex, mac, ip);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            tokio::time::sleep(REANNOUNCE_AFTER).await;
            if let Err(e) = announce(&sock, ifindex, mac, ip) {
                tracing::debug!(%ip, ifindex, error = %e, "second gratuitous ARP not sent");
            }
        });
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_names_the_address_as_sender_and_target() {
        let p = packet([2, 0x57, 1, 2, 3, 4], Ipv4Addr::new(10, 128, 64, 9));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0x57, 1, 2, 3, 4]);
        assert_eq!(&p[14..18], &[10, 128, 64, 9]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 128, 64, 9]);
    }
}
