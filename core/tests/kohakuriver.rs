//! Migration from KohakuRiver: a lab built the way KohakuRiver's host and runners leave the
//! kernel (`../shared/KOHAKURIVER.md`, "Its kernel state"), with containers on the runners'
//! bridges pinging each other; then Weir's host and runners start in its place and
//! `weir migrate kohakuriver` adopts the containers — no link re-created, at most one ping lost
//! per flow, and the containers are Weir workloads afterwards.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use common::*;
use weir::lab::{self, HOST_IP, Lab, ROUTER_IP, WAN_IP};

const OVERLAY: &str = "10.128.0.0/12";
const HOST_OVERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);
const VNI_BASE: u32 = 100;

/// A KohakuRiver runner of the lab: its id and its subnet's third octet (default plan
/// `10.128.0.0/12/6/14`: runner r holds `10.128.(64 r).0/18`).
fn subnet_octet(id: u32) -> u8 {
    (64 * id) as u8
}

fn runner_addr(id: u32, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 128, subnet_octet(id), host)
}

/// A container KohakuRiver (Docker's IPAM, in fact) started on a runner's bridge.
#[derive(Debug, Clone)]
struct Container {
    runner: u32,
    /// The lab member (`r1-kr2`): its namespace is `weir-<lab>-r1-kr2` in /run/netns, where
    /// the runner's default `netns_allow` admits it and the lab's teardown finds it.
    member: String,
    ip: Ipv4Addr,
    /// The bridge-side veth, named as Docker names them.
    port: String,
}

impl Container {
    fn new(runner: u32, n: u32, host: u8) -> Self {
        let ip = runner_addr(runner, host);
        Self {
            runner,
            member: format!("r{runner}-kr{n}"),
            ip,
            port: format!("veth{:07x}", u32::from(ip) & 0x0fff_ffff),
        }
    }

    /// Docker's MAC for an address: `02:42` and the address in hex.
    fn mac(&self) -> [u8; 6] {
        let o = self.ip.octets();
        [0x02, 0x42, o[0], o[1], o[2], o[3]]
    }

    fn mac_text(&self) -> String {
        self.mac()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The workload id `weir migrate kohakuriver` gives it.
    fn workload_id(&self) -> String {
        format!("kohakuriver-{}", self.ip.to_string().replace('.', "-"))
    }
}

/// Deletes the containers' namespaces on every exit (the lab's own teardown would also find
/// them by their `weir-<lab>-` prefix; this one runs first, before the runners go).
struct ContainerGuard(Vec<String>);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = weir::dataplane::netns::delete(ns);
        }
    }
}

/// Run one command line (split at spaces) inside a lab member's namespace; panic with its
/// stderr when it fails.
fn run(lab: &Lab, member: &str, line: &str) {
    let mut words = line.split_whitespace();
    let program = words.next().expect("a command");
    let args: Vec<&str> = words.collect();
    let out = lab
        .exec(member, program, &args)
        .unwrap_or_else(|e| panic!("{member}: {line}: {e}"));
    assert!(
        out.status.success(),
        "{member}: {line}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Plug runner `i`'s namespace into the lab's underlay switch, as the lab does for its own
/// runners, but start nothing in it.
fn plug_runner(lab: &Lab, i: u32) {
    let member = format!("r{i}");
    weir::dataplane::netns::create(&lab.ns_name(&member)).unwrap();
    let port = format!("p-{member}");
    run(
        lab,
        "lan",
        &format!(
            "ip link add {port} type veth peer name eth0 netns {}",
            lab.ns_name(&member)
        ),
    );
    run(lab, "lan", &format!("ip link set {port} master br0 up"));
    run(
        lab,
        &member,
        &format!("ip addr add {}/24 dev eth0", lab::runner_ip(i)),
    );
    run(lab, &member, "ip link set eth0 up");
    run(
        lab,
        &member,
        &format!("ip route add default via {ROUTER_IP} dev eth0 proto static"),
    );
}

/// What KohakuRiver's host leaves: `kohaku-host` with the host overlay IP, one `vxkr<id>` per
/// runner carrying the runner subnet's `.254`, forwarding on, FORWARD accepts, no nat.
fn kohakuriver_host(lab: &Lab, runners: &[u32]) {
    // KohakuRiver makes `kohaku-host` a dummy; this kernel has no dummy module, so it is a
    // bridge here — which is also what Weir's host creates when the device is missing, and an
    // empty bridge carries an address just as well.
    run(lab, "host", "ip link add kohaku-host type bridge");
    run(
        lab,
        "host",
        &format!("ip addr add {HOST_OVERLAY_IP}/12 dev kohaku-host"),
    );
    run(lab, "host", "ip link set kohaku-host up");
    for &id in runners {
        let name = format!("vxkr{id}"); // base 36 of a one-digit id is the digit
        run(
            lab,
            "host",
            &format!(
                "ip link add {name} type vxlan id {} remote {} local {HOST_IP} dstport 4789 nolearning",
                VNI_BASE + id,
                lab::runner_ip(id)
            ),
        );
        run(lab, "host", &format!("ip link set {name} mtu 1450"));
        run(
            lab,
            "host",
            &format!("ip addr add {}/18 dev {name}", runner_addr(id, 254)),
        );
        run(lab, "host", &format!("ip link set {name} up"));
    }
    run(lab, "host", "sysctl -q -w net.ipv4.ip_forward=1");
    run(
        lab,
        "host",
        &format!("iptables -A FORWARD -s {OVERLAY} -j ACCEPT"),
    );
    run(
        lab,
        "host",
        &format!("iptables -A FORWARD -d {OVERLAY} -j ACCEPT"),
    );
}

/// What a KohakuRiver runner (and its dockerd) leaves: `kohaku-overlay` with the gateway,
/// `vxlan0` enslaved, the overlay route via the host's `.254`, FORWARD accepts at 1 and 2, the
/// masquerade, forwarding on (dockerd), and Docker's `kohakuriver-net` bridge.
fn kohakuriver_runner(lab: &Lab, id: u32) {
    let m = format!("r{id}");
    let m = m.as_str();
    run(lab, m, "ip link add kohaku-overlay type bridge");
    run(lab, m, "ip link set kohaku-overlay mtu 1450");
    run(
        lab,
        m,
        &format!("ip addr add {}/18 dev kohaku-overlay", runner_addr(id, 1)),
    );
    run(lab, m, "ip link set kohaku-overlay up");
    run(
        lab,
        m,
        &format!(
            "ip link add vxlan0 type vxlan id {} remote {HOST_IP} local {} dstport 4789 nolearning",
            VNI_BASE + id,
            lab::runner_ip(id)
        ),
    );
    run(lab, m, "ip link set vxlan0 mtu 1450");
    run(lab, m, "ip link set vxlan0 master kohaku-overlay up");
    run(
        lab,
        m,
        &format!(
            "ip route add {OVERLAY} via {} dev kohaku-overlay proto static",
            runner_addr(id, 254)
        ),
    );
    run(
        lab,
        m,
        &format!("iptables -I FORWARD 1 -s {OVERLAY} -j ACCEPT"),
    );
    run(
        lab,
        m,
        &format!("iptables -I FORWARD 2 -d {OVERLAY} -j ACCEPT"),
    );
    run(
        lab,
        m,
        &format!("iptables -t nat -A POSTROUTING -s {OVERLAY} ! -d {OVERLAY} -j MASQUERADE"),
    );
    run(lab, m, "sysctl -q -w net.ipv4.ip_forward=1");
    // dockerd's bridge for `kohakuriver-net` (isolated mode), made at KohakuRiver's start.
    run(lab, m, "ip link add br-6b6f6861 type bridge");
    run(lab, m, "ip addr add 172.30.0.1/16 dev br-6b6f6861");
    run(lab, m, "ip link set br-6b6f6861 up");
}

/// A container on `kohaku-overlay`, as dockerd wires one into the `kohakuriver-overlay`
/// network: a `veth…` port on the bridge, `eth0` inside with its address, Docker's MAC and a
/// default route via the gateway.
fn kohakuriver_container(lab: &Lab, c: &Container) {
    let ns = lab.ns_name(&c.member);
    weir::dataplane::netns::create(&ns).unwrap();
    let r = format!("r{}", c.runner);
    run(
        lab,
        &r,
        &format!(
            "ip link add {} mtu 1450 type veth peer name eth0 netns {ns}",
            c.port
        ),
    );
    run(
        lab,
        &r,
        &format!("ip link set {} master kohaku-overlay up", c.port),
    );
    run(
        lab,
        &c.member,
        &format!("ip link set eth0 address {}", c.mac_text()),
    );
    run(lab, &c.member, &format!("ip addr add {}/18 dev eth0", c.ip));
    run(lab, &c.member, "ip link set lo up");
    run(lab, &c.member, "ip link set eth0 up");
    run(
        lab,
        &c.member,
        &format!("ip route add default via {}", runner_addr(c.runner, 1)),
    );
}

/// Every link whose identity the migration must keep, by a stable key: the host's and the
/// runners' links by name, each container's `eth0` (index and MAC) and its bridge port by the
/// index `eth0` names as its peer (the port itself is renamed).
async fn link_identities(lab: &Lab, containers: &[Container]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let host = links(lab, "host").await;
    for name in ["kohaku-host", "vxkr1", "vxkr2"] {
        let l = host
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("host: {name} is missing"));
        out.insert(format!("host {name}"), l.index.to_string());
    }
    for r in ["r1", "r2"] {
        let rl = links(lab, r).await;
        let bridge = rl
            .iter()
            .find(|l| l.name == "kohaku-overlay")
            .unwrap_or_else(|| panic!("{r}: kohaku-overlay is missing"));
        out.insert(format!("{r} kohaku-overlay"), bridge.index.to_string());
        for name in ["vxlan0", "br-6b6f6861"] {
            let l = rl
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("{r}: {name} is missing"));
            out.insert(format!("{r} {name}"), l.index.to_string());
        }
        let vx = rl.iter().find(|l| l.name == "vxlan0").unwrap();
        assert_eq!(
            vx.master,
            Some(bridge.index),
            "{r}: vxlan0 is on the bridge"
        );
    }
    for c in containers {
        let eth0 = links(lab, &c.member)
            .await
            .into_iter()
            .find(|l| l.name == "eth0")
            .unwrap_or_else(|| panic!("{}: eth0 is missing", c.member));
        out.insert(
            format!("{} eth0", c.member),
            format!("#{} mac {:02x?}", eth0.index, eth0.mac),
        );
        let peer = eth0.peer_index.expect("eth0 is a veth with a peer");
        let r = format!("r{}", c.runner);
        let rl = links(lab, &r).await;
        let bridge = rl.iter().find(|l| l.name == "kohaku-overlay").unwrap();
        let port = rl
            .iter()
            .find(|l| l.index == peer)
            .unwrap_or_else(|| panic!("{}: no port #{peer} on {r}", c.member));
        assert_eq!(
            port.master,
            Some(bridge.index),
            "{}: its port is on the bridge",
            c.member
        );
        out.insert(format!("{} port", c.member), format!("#{}", port.index));
    }
    out
}

/// The name of the bridge port of a container now (it is renamed by the adoption).
async fn port_name(lab: &Lab, c: &Container) -> String {
    let eth0 = links(lab, &c.member)
        .await
        .into_iter()
        .find(|l| l.name == "eth0")
        .expect("eth0");
    let peer = eth0.peer_index.expect("a peer");
    links(lab, &format!("r{}", c.runner))
        .await
        .into_iter()
        .find(|l| l.index == peer)
        .expect("the port")
        .name
}

/// `weir migrate kohakuriver --json` inside runner `i`'s namespace, against its socket.
fn migrate(lab: &Lab, i: u32, extra: &[&str]) -> (bool, serde_json::Value, String) {
    let socket = lab.dir.join(format!("r{i}.sock")).display().to_string();
    let mut args = vec!["migrate", "kohakuriver", "--socket", &socket, "--json"];
    args.extend_from_slice(extra);
    let out = lab
        .exec(
            &format!("r{i}"),
            &lab.spec.weir_bin.display().to_string(),
            &args,
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("weir migrate kohakuriver on r{i}: not JSON ({e}): {stdout}\nstderr: {stderr}")
    });
    (out.status.success(), v, stderr)
}

/// `adopted` of a migration's JSON: workload id -> the entry.
fn adopted(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    v["adopted"]
        .as_array()
        .unwrap_or_else(|| panic!("no `adopted` list in {v}"))
        .iter()
        .map(|a| {
            (
                a["workload_id"].as_str().unwrap_or_default().to_string(),
                a.clone(),
            )
        })
        .collect()
}

/// `weir attach … --json` on r1 through the lab's control socket: the address it got.
fn attach(lab: &Lab, id: &str, netns: &str, ip: Option<Ipv4Addr>) -> Ipv4Addr {
    let ip_text = ip.map(|i| i.to_string());
    let mut args = vec![
        "attach", "--runner", "r1", "--id", id, "--netns", netns, "--json",
    ];
    if let Some(ip) = &ip_text {
        args.extend(["--ip", ip]);
    }
    let out = lab.weir(&args).unwrap();
    assert!(
        out.status.success(),
        "attach {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ip"]
        .as_str()
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("attach {id}: no address in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_kohakuriver_overlay_is_adopted_in_place() {
    let mut s = spec("kohaku");
    // A stopped container (its namespace gone) is detached one second later.
    s.host_keys.push_str("workload_grace = \"1s\"\n");
    let mut lab = must(Lab::underlay(s).await);
    // Interface indexes repeat across these namespaces (each `eth0` is #2 after `lo`, and the
    // runners' layouts are alike), so a port's peer index alone names several interfaces: the
    // adoption must pair the veth ends by namespace too (an earlier draft did not; this lab
    // caught it).
    let containers = vec![
        Container::new(1, 1, 2),
        Container::new(1, 2, 3),
        Container::new(2, 1, 2),
    ];
    let _guard = ContainerGuard(containers.iter().map(|c| lab.ns_name(&c.member)).collect());

    // ---- 1. KohakuRiver's overlay, as its host, two runners and dockerd leave it ----
    plug_runner(&lab, 1);
    plug_runner(&lab, 2);
    kohakuriver_host(&lab, &[1, 2]);
    kohakuriver_runner(&lab, 1);
    kohakuriver_runner(&lab, 2);
    for c in &containers {
        kohakuriver_container(&lab, c);
    }
    let (r1a, r1b, r2a) = (&containers[0], &containers[1], &containers[2]);
    // It works before anything of Weir's runs: across runners through the host, on one
    // bridge, to the host's overlay IP, and out to the wan through the runner's masquerade.
    assert!(
        lab.ping(&r1a.member, r2a.ip),
        "r1 container -> r2 container"
    );
    assert!(
        lab.ping(&r2a.member, r1b.ip),
        "r2 container -> r1 container"
    );
    assert!(lab.ping(&r1b.member, r1a.ip), "same-bridge containers");
    assert!(lab.ping(&r2a.member, HOST_OVERLAY_IP), "container -> host");
    let probe = lab.wan_listener().unwrap();
    assert_eq!(
        lab.wan_sees(&r1a.member, &probe),
        Some(lab::runner_ip(1)),
        "KohakuRiver's masquerade"
    );
    assert!(lab.ping(&r1a.member, WAN_IP));

    // ---- 2. flows under ping; every link's identity ----
    let pings = [
        ("cross r1->r2", Pinger::start(&lab, &r1a.member, r2a.ip)),
        ("cross r2->r1", Pinger::start(&lab, &r2a.member, r1b.ip)),
        ("same bridge", Pinger::start(&lab, &r1b.member, r1a.ip)),
    ];
    let before = link_identities(&lab, &containers).await;
    // The pings run a while before, during and after the switch (what is measured, not a
    // synchronisation).
    tokio::time::sleep(dur(1)).await;

    // ---- 3. Weir takes over: host (empty state), runners, then the migration on each ----
    lab.start_host().await.unwrap();
    for i in [1, 2] {
        lab.start_runner(i).await.unwrap();
    }
    wait_until("both runners are active", dur(20), || {
        is_active(&lab, "r1") && is_active(&lab, "r2")
    })
    .await;
    for (r, id) in [("r1", 1), ("r2", 2)] {
        assert_eq!(
            runner_status(&lab, r).unwrap()["id"].as_u64(),
            Some(id),
            "{r} gets the id of KohakuRiver's tunnel to its physical IP"
        );
    }

    // A dry run adopts nothing.
    let (ok, dry, err) = migrate(&lab, 1, &["--dry-run"]);
    assert!(ok, "dry run: {err}");
    let would: Vec<String> = adopted(&dry).into_keys().collect();
    assert_eq!(would, vec![r1a.workload_id(), r1b.workload_id()], "{dry}");
    assert!(
        listed(&lab).await.is_empty(),
        "a dry run adopts nothing: {:?}",
        listed(&lab).await
    );

    let mut reports = BTreeMap::new();
    for i in [1, 2] {
        let (ok, v, err) = migrate(&lab, i, &[]);
        assert!(ok, "migration on r{i} failed: {v}\n{err}");
        for list in ["skipped", "failed"] {
            assert_eq!(
                v[list].as_array().map(Vec::len),
                Some(0),
                "r{i}, {list}: {v}"
            );
        }
        reports.extend(adopted(&v));
    }
    // Let the flows run on a little past the last change, then count.
    tokio::time::sleep(dur(2)).await;
    for (flow, p) in pings {
        let (sent, received) = p.stop();
        assert!(sent >= 25, "{flow}: the ping ran ({sent} sent)");
        assert!(
            sent - received <= 1,
            "{flow}: lost {} of {sent} pings across the migration",
            sent - received
        );
    }

    // Every container adopted with its address, namespace and interface, its port renamed.
    let ids: Vec<String> = reports.keys().cloned().collect();
    let mut want: Vec<String> = containers.iter().map(Container::workload_id).collect();
    want.sort();
    assert_eq!(ids, want);
    for c in &containers {
        let a = &reports[&c.workload_id()];
        assert_eq!(
            a["ip"].as_str().map(|s| s.split('/').next()),
            Some(Some(c.ip.to_string().as_str())),
            "{a}"
        );
        assert_eq!(a["netns"], lab.ns(&c.member).display().to_string(), "{a}");
        assert_eq!(a["ifname"], "eth0", "{a}");
        assert_eq!(a["mac"], c.mac_text().as_str(), "{a}");
        assert_eq!(a["port"], c.port.as_str(), "the port it was found as: {a}");
        assert_ne!(
            port_name(&lab, c).await,
            c.port,
            "the port now has Weir's name"
        );
    }
    // Nothing was re-created: same indexes, same MACs.
    assert_eq!(link_identities(&lab, &containers).await, before);
    for c in &containers {
        let eth0 = links(&lab, &c.member)
            .await
            .into_iter()
            .find(|l| l.name == "eth0")
            .unwrap();
        assert_eq!(
            eth0.mac,
            Some(c.mac()),
            "{}: eth0 keeps Docker's MAC",
            c.member
        );
    }

    // Weir lists them, with their origin.
    let out = lab.weir(&["workloads", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["workloads"].as_array().unwrap();
    assert_eq!(list.len(), containers.len(), "{v}");
    for c in &containers {
        let w = list
            .iter()
            .find(|w| w["id"] == c.workload_id().as_str())
            .unwrap_or_else(|| panic!("{} is not listed: {v}", c.workload_id()));
        // `kohakuriver/<network>`, as Docker's are `docker/<network id>`.
        assert_eq!(w["origin"], "kohakuriver/default", "{w}");
        assert_eq!(w["runner"], format!("r{}", c.runner), "{w}");
        assert_eq!(
            w["mac"].as_str().map(str::to_lowercase),
            Some(c.mac_text()),
            "{w}"
        );
        assert_eq!(
            w["ip"].as_str().and_then(|s| s.split('/').next()),
            Some(c.ip.to_string().as_str()),
            "{w}"
        );
    }
    doctor_clean(&lab).await;

    // KohakuRiver's iptables rules are left as they were (docs/migration-kohakuriver.md).
    for (m, table, rule) in [
        (
            "host",
            "filter",
            format!("-A FORWARD -s {OVERLAY} -j ACCEPT"),
        ),
        ("r1", "filter", format!("-A FORWARD -d {OVERLAY} -j ACCEPT")),
        (
            "r2",
            "nat",
            format!("-A POSTROUTING -s {OVERLAY} ! -d {OVERLAY} -j MASQUERADE"),
        ),
    ] {
        let out = lab.exec(m, "iptables", &["-t", table, "-S"]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l == rule),
            "{m}: `{rule}` is gone:\n{text}"
        );
    }

    // A second run finds nothing new.
    for i in [1, 2] {
        let (ok, v, err) = migrate(&lab, i, &[]);
        assert!(ok, "second migration on r{i}: {v}\n{err}");
        assert!(adopted(&v).is_empty(), "a second run adopts nothing: {v}");
    }
    assert_eq!(listed(&lab).await.len(), containers.len());

    // Still connected after Weir's data plane took over, and NATed at the runner.
    assert!(lab.ping(&r1a.member, r2a.ip));
    assert!(lab.ping(&r2a.member, HOST_OVERLAY_IP));
    assert_eq!(lab.wan_sees(&r2a.member, &probe), Some(lab::runner_ip(2)));

    // A new workload on r1 gets none of the adopted addresses (nor the gateway or .254).
    let n1 = new_netns(&lab, "r1-new1");
    let fresh = attach(&lab, "new1", &n1, None);
    assert!(
        !containers.iter().any(|c| c.ip == fresh)
            && fresh != runner_addr(1, 1)
            && fresh != runner_addr(1, 254),
        "the new workload got {fresh}, an address already taken"
    );
    assert!(
        lab.ping("r1-new1", r1a.ip),
        "new workload -> adopted container"
    );
    assert!(
        lab.ping("r1-new1", r2a.ip),
        "new workload -> r2's adopted container"
    );

    // An adopted workload detaches like any other: its interface goes, its address is free.
    let out = lab.weir(&["detach", "--id", &r1b.workload_id()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_interface_left(&lab, &r1b.member).await;
    let n2 = new_netns(&lab, "r1-new2");
    assert_eq!(
        attach(&lab, "new2", &n2, Some(r1b.ip)),
        r1b.ip,
        "the detached workload's address is free again"
    );
    assert!(lab.ping("r1-new2", r2a.ip));
    doctor_clean(&lab).await;

    // An adopted container that stops (Docker removes its namespace) is detached like any
    // workload whose namespace is gone.
    weir::dataplane::netns::delete(&lab.ns_name(&r2a.member)).unwrap();
    let gone = r2a.workload_id();
    wait_until(&format!("{gone} is released"), dur(15), || {
        !futures::executor::block_on(listed(&lab))
            .iter()
            .any(|w| w.workload_id == gone)
    })
    .await;
    doctor_clean(&lab).await;
}
