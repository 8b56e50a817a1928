//! Set elements through netlink, checked with the `nft` binary, inside a namespace.

mod common;

use std::net::Ipv4Addr;

use common::ScratchNs;
use weir::dataplane::netns;
use weir::dataplane::nfnl::{Elem, apply};

#[test]
fn elements_go_in_and_out_without_an_nft_process() {
    let scratch = ScratchNs::new("nfnl");
    let ns = scratch.path.clone();
    let nft = |script: &str| scratch.run("nft", &[script]);
    nft("add table inet t");
    nft("add set inet t peers { type ipv4_addr; }");
    nft("add set inet t m1 { type ipv4_addr; }");
    let ops = vec![
        Elem::Add {
            set: "peers".into(),
            key: Ipv4Addr::new(10, 0, 1, 2),
        },
        Elem::Add {
            set: "peers".into(),
            key: Ipv4Addr::new(10, 0, 1, 3),
        },
        Elem::Add {
            set: "m1".into(),
            key: Ipv4Addr::new(10, 0, 1, 2),
        },
    ];
    netns::run_in(&ns, move || apply("t", &ops))
        .unwrap()
        .unwrap();
    let listed = nft("list table inet t");
    assert!(
        listed.contains("10.0.1.2") && listed.contains("10.0.1.3"),
        "{listed}"
    );
    let m1 = nft("list set inet t m1");
    assert!(m1.contains("10.0.1.2") && !m1.contains("10.0.1.3"), "{m1}");
    // Adding again is idempotent; deleting removes.
    let again = vec![Elem::Add {
        set: "peers".into(),
        key: Ipv4Addr::new(10, 0, 1, 2),
    }];
    netns::run_in(&ns, move || apply("t", &again))
        .unwrap()
        .unwrap();
    let del = vec![Elem::Del {
        set: "peers".into(),
        key: Ipv4Addr::new(10, 0, 1, 3),
    }];
    netns::run_in(&ns, move || apply("t", &del))
        .unwrap()
        .unwrap();
    let listed = nft("list set inet t peers");
    assert!(
        listed.contains("10.0.1.2") && !listed.contains("10.0.1.3"),
        "{listed}"
    );
    // A failing batch changes nothing and says why.
    let bad = vec![
        Elem::Add {
            set: "peers".into(),
            key: Ipv4Addr::new(10, 0, 1, 9),
        },
        Elem::Del {
            set: "peers".into(),
            key: Ipv4Addr::new(10, 0, 1, 77),
        },
    ];
    let e = netns::run_in(&ns, move || apply("t", &bad))
        .unwrap()
        .unwrap_err();
    assert!(
        e.to_string().starts_with("nftables elements of t:")
            && e.kind() == std::io::ErrorKind::NotFound,
        "{e}"
    );
    assert!(
        !nft("list set inet t peers").contains("10.0.1.9"),
        "the batch is atomic"
    );
}
