//! Set elements through nftables' netlink interface, without an `nft` process.
//!
//! Whole tables are replaced through the `nft` binary ([`super::nft`]); the hot path — a
//! workload's address into its group's member set, a peer into a selector set — is a single
//! netlink batch (`NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` between batch begin and end), tens
//! of microseconds instead of a process start (~2.4 ms here). Only IPv4 keys of plain sets are
//! needed, so that is all this speaks.

use std::io;
use std::net::Ipv4Addr;

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

// <linux/netlink.h>
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
// <linux/netfilter/nfnetlink.h>
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
// <linux/netfilter/nf_tables.h>
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
/// `NFPROTO_INET`.
pub const FAMILY_INET: u8 = 1;

/// One element operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    /// Add an address to a set.
    Add { set: String, key: Ipv4Addr },
    /// Remove an element (it must exist).
    Del { set: String, key: Ipv4Addr },
}

/// Apply element operations on `table` (family inet) in one atomic batch.
pub fn apply(table: &str, ops: &[Elem]) -> io::Result<()> {
    crate::telemetry::kernel_sync("nftables.elements", || {
        if ops.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(256 + ops.len() * 48);
        let mut seq: u32 = 1;
        batch_marker(&mut buf, NFNL_MSG_BATCH_BEGIN, seq);
        let mut acks = Vec::new();
        // Consecutive operations of one kind on one set share a message.
        let mut i = 0;
        while i < ops.len() {
            let (kind, set) = key_of(&ops[i]);
            let mut j = i;
            while j < ops.len() && key_of(&ops[j]) == (kind, set) {
                j += 1;
            }
            seq += 1;
            acks.push(seq);
            elements_msg(&mut buf, seq, table, set, kind, &ops[i..j]);
            i = j;
        }
        seq += 1;
        batch_marker(&mut buf, NFNL_MSG_BATCH_END, seq);

        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.send(&buf, 0)?;
        // One answer per acked message; the first error wins (the batch is then rolled back).
        let mut pending = acks.len();
        let mut first_err: Option<io::Error> = None;
        while pending > 0 {
            let (data, _) = sock.recv_from_full()?;
            let mut off = 0;
            while off + 16 <= data.len() {
                let len =
                    u32::from_ne_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap_or_default());
                if len < 16 || off + len > data.len() {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    let code =
                        i32::from_ne_bytes(data[off + 16..off + 20].try_into().unwrap_or_default());
                    pending = pending.saturating_sub(1);
                    if code != 0 && first_err.is_none() {
                        first_err = Some(io::Error::from_raw_os_error(-code));
                    }
                }
                off += (len + 3) & !3;
            }
            if first_err.is_some() {
                break;
            }
        }
        match first_err {
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!("nftables elements of {table}: {e}"),
            )),
            None => Ok(()),
        }
    })
}

fn key_of(op: &Elem) -> (u16, &str) {
    match op {
        Elem::Add { set, .. } => (NFT_MSG_NEWSETELEM, set),
        Elem::Del { set, .. } => (NFT_MSG_DELSETELEM, set),
    }
}

fn nlmsg_header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched later
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// `struct nfgenmsg`: family, version, resource id (big endian).
fn nfgenmsg(buf: &mut Vec<u8>, family: u8, res_id: u16) {
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn batch_marker(buf: &mut Vec<u8>, ty: u16, seq: u32) {
    let start = nlmsg_header(buf, ty, NLM_F_REQUEST, seq);
    nfgenmsg(buf, 0, NFNL_SUBSYS_NFTABLES);
    finish(buf, start);
}

fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad(buf);
}

fn attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    attr(buf, ty, &v);
}

fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn nest_end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn elements_msg(buf: &mut Vec<u8>, seq: u32, table: &str, set: &str, kind: u16, ops: &[Elem]) {
    let flags = NLM_F_REQUEST
        | NLM_F_ACK
        | if kind == NFT_MSG_NEWSETELEM {
            NLM_F_CREATE
        } else {
            0
        };
    let start = nlmsg_header(buf, (NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq);
    nfgenmsg(buf, FAMILY_INET, 0);
    attr_str(buf, NFTA_SET_ELEM_LIST_TABLE, table);
    attr_str(buf, NFTA_SET_ELEM_LIST_SET, set);
    let list = nest_start(buf, NFTA_SET_ELEM_LIST_ELEMENTS);
    for op in ops {
        let elem = nest_start(buf, NFTA_LIST_ELEM);
        let (Elem::Add { key, .. } | Elem::Del { key, .. }) = op;
        let k = nest_start(buf, NFTA_SET_ELEM_KEY);
        attr(buf, NFTA_DATA_VALUE, &key.octets());
        nest_end(buf, k);
        nest_end(buf, elem);
    }
    nest_end(buf, list);
    finish(buf, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_well_formed() {
        let mut buf = Vec::new();
        let ops = [
            Elem::Add {
                set: "m1".into(),
                key: Ipv4Addr::new(10, 0, 1, 2),
            },
            Elem::Add {
                set: "m1".into(),
                key: Ipv4Addr::new(10, 0, 1, 3),
            },
        ];
        elements_msg(&mut buf, 2, "weir_fw", "m1", NFT_MSG_NEWSETELEM, &ops);
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, buf.len(), "length covers the message");
        assert_eq!(len % 4, 0, "aligned");
        let ty = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        assert_eq!(ty, (10 << 8) | 12);
        // The table, the set and both keys are in the payload.
        let hay = String::from_utf8_lossy(&buf);
        assert!(hay.contains("weir_fw\0") && hay.contains("m1\0"));
        assert!(
            buf.windows(4).any(|w| w == [10, 0, 1, 2])
                && buf.windows(4).any(|w| w == [10, 0, 1, 3])
        );
    }
}
