//! A workload attach at the data-plane level (no daemons): a runner namespace with a bridge, a
//! workload namespace, and `attach_checked` between them. A refused attach leaves nothing
//! behind and never takes a namespace's own default route away.

mod common;

use std::net::Ipv4Addr;

use common::ScratchNs;
use weir::dataplane::DataplaneError;
use weir::dataplane::attach::{self, WorkloadIface};
use weir::dataplane::netlink::Netlink;
use weir::dataplane::netns::{self, NetnsPolicy, NsIdentity};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// A runner's namespace with a bridge `br0` holding the gateway; its netlink and the bridge.
async fn runner() -> (ScratchNs, Netlink, u32) {
    let ns = ScratchNs::new("rn");
    let nl = Netlink::in_namespace(&ns.path).unwrap();
    let br = nl.add_bridge("br0", 1500).await.unwrap();
    nl.add_addr(br.index, "10.77.0.1/24".parse().unwrap())
        .await
        .unwrap();
    nl.set_up(br.index).await.unwrap();
    (ns, nl, br.index)
}

fn iface(ws: &ScratchNs, bridge: u32) -> WorkloadIface {
    WorkloadIface {
        network: "default".into(),
        workload: ws.name.clone(),
        netns: ws.path.clone(),
        ifname: "eth0".into(),
        addr: "10.77.0.5/24".parse().unwrap(),
        gateway: GATEWAY,
        mtu: 1500,
        bridge,
        default_route: true,
        source_table: None,
        overlay: None,
        announce: true,
    }
}

/// Weir's workload interfaces on the runner, and the workload's links and default routes.
async fn leftovers(nl: &Netlink, ws: &ScratchNs) -> (Vec<String>, Vec<String>, Vec<String>) {
    let ours = attach::list(nl)
        .await
        .unwrap()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let inner = Netlink::in_namespace(&ws.path).unwrap();
    let links = inner
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    let defaults = default_routes(&inner).await;
    (ours, links, defaults)
}

async fn default_routes(inner: &Netlink) -> Vec<String> {
    let links = inner.links().await.unwrap();
    inner
        .routes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.destination.prefix_len() == 0)
        .map(|r| {
            let dev = r
                .oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone());
            format!("via {:?} dev {:?}", r.gateway, dev)
        })
        .collect()
}

#[tokio::test]
async fn a_namespace_with_its_own_default_route_is_refused_and_keeps_it() {
    let (_rn, nl, bridge) = runner().await;
    let ws = ScratchNs::new("wl");
    // Its own uplink (a veth pair inside it: no traffic leaves the test's namespaces).
    ws.run(
        "ip",
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    ws.run("ip", &["addr", "add", "192.0.2.2/24", "dev", "d0"]);
    ws.run("ip", &["link", "set", "d1", "up"]);
    ws.run("ip", &["link", "set", "d0", "up"]);
    ws.run("ip", &["route", "add", "default", "via", "192.0.2.1"]);
    let (_, _, before) = leftovers(&nl, &ws).await;
    assert_eq!(before, vec!["via Some(192.0.2.1) dev Some(\"d0\")"]);

    let w = iface(&ws, bridge);
    let e = attach::attach_checked(&nl, &w, &NetnsPolicy::default(), None)
        .await
        .expect_err("refused");
    assert!(
        matches!(e, DataplaneError::ForeignDefaultRoute { .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("already has a default route via 192.0.2.1 dev d0")
            && msg.contains("Weir does not replace it")
            && msg.contains(&ws.path.display().to_string()),
        "{msg}"
    );
    let (ours, links, after) = leftovers(&nl, &ws).await;
    assert!(ours.is_empty(), "no veth left on the runner: {ours:?}");
    assert!(!links.contains(&"eth0".to_string()), "{links:?}");
    assert_eq!(after, before, "the namespace keeps its default route");

    // Without the default route the same namespace is fine (its route stays).
    let w = WorkloadIface {
        default_route: false,
        overlay: Some("10.77.0.0/16".parse().unwrap()),
        ..w
    };
    attach::attach_checked(&nl, &w, &NetnsPolicy::default(), None)
        .await
        .unwrap();
    let (ours, links, after) = leftovers(&nl, &ws).await;
    assert_eq!(ours.len(), 1);
    assert!(links.contains(&"eth0".to_string()));
    assert_eq!(after, before);
}

#[tokio::test]
async fn an_attach_that_fails_after_creating_its_veth_removes_it() {
    let (_rn, nl, bridge) = runner().await;
    let ws = ScratchNs::new("wl");
    // A gateway off the interface's subnet: the default route cannot be installed, after the
    // veth was created.
    let w = WorkloadIface {
        gateway: Ipv4Addr::new(10, 78, 0, 1),
        ..iface(&ws, bridge)
    };
    let e = attach::attach_checked(&nl, &w, &NetnsPolicy::default(), None)
        .await
        .expect_err("refused");
    assert!(
        matches!(e, DataplaneError::Netlink { .. }),
        "the route is refused by the kernel, after the veth was created: {e:?}"
    );
    let (ours, links, defaults) = leftovers(&nl, &ws).await;
    assert!(ours.is_empty(), "{e}: no veth on the runner: {ours:?}");
    assert!(!links.contains(&"eth0".to_string()), "{e}: {links:?}");
    assert!(defaults.is_empty());
    assert!(
        nl.link(&w.host_ifname()).await.unwrap().is_none(),
        "the host end is gone"
    );
}

#[tokio::test]
async fn an_attach_returns_the_namespace_and_a_replaced_one_is_refused() {
    let (_rn, nl, bridge) = runner().await;
    let ws = ScratchNs::new("wl");
    let w = iface(&ws, bridge);
    let policy = NetnsPolicy::default();
    let id = attach::attach_checked(&nl, &w, &policy, None)
        .await
        .unwrap();
    assert_eq!(id, netns::identity(&ws.path).unwrap());
    let inner = Netlink::in_namespace(&ws.path).unwrap();
    assert_eq!(
        default_routes(&inner).await,
        vec!["via Some(10.77.0.1) dev Some(\"eth0\")"]
    );
    // Again (a repair): its own default route is no reason to refuse.
    assert_eq!(
        attach::attach_checked(&nl, &w, &policy, Some(id))
            .await
            .unwrap(),
        id
    );
    // The path holds another namespace than the one the workload was attached in.
    let other = NsIdentity {
        ino: id.ino + 1,
        ..id
    };
    let e = attach::attach_checked(&nl, &w, &policy, Some(other))
        .await
        .expect_err("refused");
    assert!(matches!(e, DataplaneError::NetnsReplaced { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "the namespace at {} is not the workload's: it was replaced",
            ws.path.display()
        )),
        "{msg}"
    );
    // A path the policy refuses is refused before anything is created.
    let w2 = WorkloadIface {
        workload: "elsewhere".into(),
        netns: "/tmp/not-a-namespace".into(),
        ..w.clone()
    };
    let e = attach::attach_checked(&nl, &w2, &policy, None)
        .await
        .expect_err("refused");
    assert!(matches!(e, DataplaneError::Netns(_)), "{e:?}");
    assert!(nl.link(&w2.host_ifname()).await.unwrap().is_none());
    // Detach leaves the namespace without Weir's interface.
    attach::detach_many(&nl, &[(w.network.clone(), w.workload.clone())], 0x5745_7778)
        .await
        .unwrap();
    assert!(attach::list(&nl).await.unwrap().is_empty());
}

/// Detaches batched into one kernel request remove exactly their workloads' interfaces (and
/// their peers inside the namespaces); another workload's and other links stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_detaches_removes_exactly_its_interfaces() {
    let (_rn, nl, br) = runner().await;
    let workloads: Vec<ScratchNs> = (0..4).map(|_| ScratchNs::new("wb")).collect();
    for (i, ws) in workloads.iter().enumerate() {
        let mut w = iface(ws, br);
        w.addr = format!("10.77.0.{}/24", 10 + i).parse().unwrap();
        attach::attach_checked(&nl, &w, &NetnsPolicy::default(), None)
            .await
            .unwrap();
    }
    let before = nl.links().await.unwrap().len();
    let batch: Vec<(String, String)> = workloads[..3]
        .iter()
        .map(|ws| ("default".to_string(), ws.name.clone()))
        .chain([("default".to_string(), "never-attached".to_string())])
        .collect();
    let freed = attach::detach_many(&nl, &batch, 0x5745_7777).await.unwrap();
    assert_eq!(freed, [br, br, br], "each removed port was on the bridge");
    let left: Vec<String> = attach::list(&nl)
        .await
        .unwrap()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(left, [attach::alias("default", &workloads[3].name)]);
    assert_eq!(nl.links().await.unwrap().len(), before - 3);
    for ws in &workloads[..3] {
        let inner = Netlink::in_namespace(&ws.path).unwrap();
        assert!(inner.link("eth0").await.unwrap().is_none(), "{}", ws.name);
    }
    // The bridge (group 0, like every other link) is untouched.
    assert!(nl.link("br0").await.unwrap().is_some());
}
