//! `weir-netavark` driven by the real netavark 2.1 binary (its plugin API: `create`, `setup`,
//! `teardown`), netavark run inside runner r1's namespace of a lab with its state in the lab's
//! directory: setup gives a container namespace of the test's own an address from Weir (the
//! status block, the host's list with the origin, the kernel, a ping of the host), teardown
//! frees it; a requested address, a reservation token, labels, refusals naming their field.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};
use weir::lab::{Lab, run_in_namespace};
use weir_proto::v1 as pb;

const HOST_OVERLAY_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 1);
/// The netavark network (podman's name for it); workloads' origin is `netavark/NET`.
const NET: &str = "weirnav";
const NET_ID: &str = "3f1a5c0e9b8d7a6f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c3b2a1908f7e";

/// netavark 2.1: `$WEIR_NETAVARK`, or where scripts/bootstrap.sh builds it.
fn netavark_bin() -> PathBuf {
    let p = std::env::var_os("WEIR_NETAVARK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/weir/netavark-2.1/bin/netavark"));
    assert!(
        p.is_file(),
        "netavark 2.1 is missing at {} (set WEIR_NETAVARK, or run scripts/bootstrap.sh, which builds it there)",
        p.display()
    );
    p
}

/// `weir-netavark`, built beside `weir` (the workspace builds both).
fn plugin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_weir")).with_file_name("weir-netavark");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// netavark run as podman runs it, inside a runner's namespace, with its config directory and
/// a plugin directory (holding only `weir-netavark`) in the lab's directory.
struct Netavark {
    bin: PathBuf,
    config: PathBuf,
    plugins: PathBuf,
    ns: PathBuf,
}

struct Outcome {
    ok: bool,
    out: Value,
    stderr: String,
}

impl Netavark {
    fn in_lab(lab: &Lab, runner: &str) -> Self {
        let config = lab.dir.join(format!("netavark-{runner}"));
        let plugins = lab.dir.join("netavark-plugins");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::create_dir_all(&plugins).unwrap();
        let link = plugins.join("weir-netavark");
        if !link.exists() {
            std::os::unix::fs::symlink(plugin(), &link).unwrap();
        }
        Self {
            bin: netavark_bin(),
            config,
            plugins,
            ns: lab.ns(runner),
        }
    }

    fn run(&self, args: &[&str], stdin: &Value) -> Outcome {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("--firewall-driver")
            .arg("none")
            .arg("--config")
            .arg(&self.config)
            .arg("--plugin-directory")
            .arg(&self.plugins)
            .args(args)
            .stderr(Stdio::piped());
        run_in_namespace(&mut c, &self.ns).unwrap();
        let (status, out, stderr) = run_with_json(&mut c, stdin);
        Outcome {
            ok: status == Some(0),
            out,
            stderr,
        }
    }

    #[track_caller]
    fn ok(&self, args: &[&str], stdin: &Value) -> Value {
        let o = self.run(args, stdin);
        assert!(
            o.ok,
            "netavark {args:?} failed: {} (stderr: {})",
            o.out, o.stderr
        );
        o.out
    }

    /// A failure's message (netavark's `{"error": …}`).
    #[track_caller]
    fn fails(&self, args: &[&str], stdin: &Value) -> String {
        let o = self.run(args, stdin);
        assert!(!o.ok, "netavark {args:?} should have failed: {}", o.out);
        o.out["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {} (stderr: {})", o.out, o.stderr))
            .to_string()
    }
}

/// The network as podman stores it for `podman network create -d weir-netavark -o socket=…`.
fn network(socket: &Path) -> Value {
    json!({
        "name": NET,
        "id": NET_ID,
        "driver": "weir-netavark",
        "subnets": [],
        "ipv6_enabled": false,
        "internal": false,
        "dns_enabled": false,
        "options": {"socket": socket},
    })
}

/// netavark's setup/teardown input for one container on our network.
fn container(network: &Value, id: &str, per_network: Value) -> Value {
    let mut per = json!({"interface_name": "eth0", "aliases": [&id[..12]]});
    if let (Some(p), Some(extra)) = (per.as_object_mut(), per_network.as_object()) {
        p.extend(extra.clone());
    }
    json!({
        "container_id": id,
        "container_name": format!("ctr-{}", &id[..6]),
        "networks": {NET: per},
        "network_info": {NET: network},
    })
}

fn ctr_id(n: u32) -> String {
    format!("{n:02}{}", "ab".repeat(31))
}

/// Our network's entry of a setup's answer (netavark answers a map by network name).
fn ipnet_of(status: &Value) -> (String, String) {
    let eth0 = &status[NET]["interfaces"]["eth0"];
    let ipnet = eth0["subnets"][0]["ipnet"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {status}"))
        .to_string();
    (ipnet, eth0["mac_address"].as_str().unwrap().to_string())
}

fn addr(ipnet: &str) -> Ipv4Addr {
    ipnet.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netavark_setup_and_teardown_give_and_free_an_address() {
    let mut spec = spec("nav");
    spec.runners = 1;
    spec.workloads_per_runner = 0;
    let lab = must(Lab::up(spec).await);
    let nv = Netavark::in_lab(&lab, "r1");
    let net = network(&lab.dir.join("r1.sock"));

    // info, as netavark asks a plugin.
    let o = Command::new(plugin()).arg("info").output().unwrap();
    assert!(o.status.success());
    let info: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["api_version"], "1.0.0", "{info}");
    assert!(info["version"].is_string(), "{info}");

    // create through netavark (`netavark create`, which runs the plugin's create): the
    // network comes back as given, with netavark's creation time; an unknown option fails.
    let create = |n: &Value| {
        json!({
            "network": n,
            "used": {"interfaces": [], "names": {}, "subnets": []},
            "options": {"subnet_pools": [], "check_used_subnets": false},
        })
    };
    let created = nv.ok(&["create"], &create(&net));
    assert_eq!(created["driver"], "weir-netavark", "{created}");
    assert_eq!(created["name"], NET);
    assert_eq!(created["options"], net["options"]);
    assert!(created["created"].is_string(), "{created}");
    let mut typo = net.clone();
    typo["options"]["weir.netwrok"] = json!("blue");
    let msg = nv.fails(&["create"], &create(&typo));
    assert!(msg.contains("options.weir.netwrok"), "{msg}");

    // setup: an address from r1's subnet, in the status block, the host's list and the kernel.
    let c1 = new_netns(&lab, "c1");
    let id1 = ctr_id(1);
    let status = nv.ok(&["setup", &c1], &container(&net, &id1, json!({})));
    let (ipnet, mac) = ipnet_of(&status);
    let gateway = status[NET]["interfaces"]["eth0"]["subnets"][0]["gateway"].clone();
    assert!(gateway.is_string(), "{status}");
    let w = listed(&lab).await;
    let rec = w
        .iter()
        .find(|w| w.workload_id == id1)
        .unwrap_or_else(|| panic!("{id1} is not a Weir workload: {w:?}"));
    assert_eq!(rec.origin, format!("netavark/{NET}"));
    assert_eq!(rec.runner, "r1");
    assert_eq!(rec.ip, ipnet);
    assert_eq!(rec.ifname, "eth0");
    assert_eq!(rec.netns, c1);
    assert_eq!(
        lab.address_of("c1").await.map(|a| a.to_string()),
        Some(ipnet.clone()),
        "c1's eth0 has the address the status block gives"
    );
    let inside = links(&lab, "c1").await;
    let eth0 = inside.iter().find(|l| l.name == "eth0").unwrap();
    assert_eq!(
        mac,
        weir::dataplane::attach::mac_string(eth0.mac.unwrap()),
        "the status block's MAC is eth0's"
    );
    assert!(lab.ping("c1", HOST_OVERLAY_IP), "c1 reaches the host");
    // The same setup again answers the same (netavark retries after its own failures).
    let again = nv.ok(&["setup", &c1], &container(&net, &id1, json!({})));
    assert_eq!(ipnet_of(&again).0, ipnet);

    // Refusals name the field and leave nothing.
    let c2 = new_netns(&lab, "c2");
    let id2 = ctr_id(2);
    let msg = nv.fails(
        &["setup", &c2],
        &container(&net, &id2, json!({"static_mac": "aa:bb:cc:dd:ee:ff"})),
    );
    assert!(msg.contains("static_mac"), "{msg}");
    let msg = nv.fails(
        &["setup", &c2],
        &container(&net, &id2, json!({"options": {"colour": "red"}})),
    );
    assert!(msg.contains("network_options.options.colour"), "{msg}");
    let mut nowhere = net.clone();
    nowhere["options"]["socket"] = json!(lab.dir.join("nosuch.sock"));
    let msg = nv.fails(&["setup", &c2], &container(&nowhere, &id2, json!({})));
    assert!(msg.contains("does not answer"), "{msg}");
    assert_eq!(
        listed(&lab).await.len(),
        1,
        "no refused setup left a workload"
    );
    assert!(!links(&lab, "c2").await.iter().any(|l| l.name == "eth0"));

    // teardown frees it: gone from the list and from the namespace; a second one is fine.
    nv.ok(&["teardown", &c1], &container(&net, &id1, json!({})));
    assert!(listed(&lab).await.is_empty(), "{:?}", listed(&lab).await);
    no_interface_left(&lab, "c1").await;
    nv.ok(&["teardown", &c1], &container(&net, &id1, json!({})));

    // The freed address can be had again (`--ip`: static_ips) by another container, with a
    // label from its own options (`--network weirnav:weir.label.app=web`).
    let per = json!({"static_ips": [addr(&ipnet)], "options": {"weir.label.app": "web"}});
    let s2 = nv.ok(&["setup", &c2], &container(&net, &id2, per.clone()));
    assert_eq!(
        ipnet_of(&s2).0,
        ipnet,
        "the torn-down address is free again"
    );
    let w2 = listed(&lab).await;
    assert_eq!(w2.len(), 1, "{w2:?}");
    assert_eq!(w2[0].workload_id, id2);
    assert_eq!(w2[0].labels.get("app").map(String::as_str), Some("web"));
    // c2 reaches its gateway on r1, and the host at once: the host's neighbour entry for the
    // reused address still had c1's MAC until c2's interface announced itself (gratuitous
    // ARP at attach; without it the host answers c1's MAC for up to ~30 s).
    let gw: Ipv4Addr = gateway.as_str().unwrap().parse().unwrap();
    assert!(lab.ping("c2", gw), "c2 reaches its gateway");
    assert!(
        lab.ping("c2", HOST_OVERLAY_IP),
        "c2 does not reach the host with an address c1 had a moment ago"
    );
    nv.ok(&["teardown", &c2], &container(&net, &id2, per));
    no_interface_left(&lab, "c2").await;

    // A reservation token (`--network weirnav:weir.reservation=TOKEN`) gets the reserved
    // address.
    let r = control(&lab)
        .await
        .reserve_address(pb::ReserveAddressRequest {
            runner: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let c3 = new_netns(&lab, "c3");
    let id3 = ctr_id(3);
    let per = json!({"options": {"weir.reservation": r.token}});
    let s3 = nv.ok(&["setup", &c3], &container(&net, &id3, per.clone()));
    assert_eq!(
        addr(&ipnet_of(&s3).0).to_string(),
        r.ip.split('/').next().unwrap()
    );
    let w3 = listed(&lab).await;
    assert_eq!(w3.len(), 1, "{w3:?}");
    assert_eq!(w3[0].reservation_id, r.reservation_id);
    // Its namespace is gone before the teardown (a crashed container): netavark still runs the
    // plugin's teardown, which frees the address, and the host and runner agree nothing is left.
    weir::dataplane::netns::delete(&lab.ns_name("c3")).unwrap();
    nv.ok(&["teardown", &c3], &container(&net, &id3, per));
    assert!(listed(&lab).await.is_empty());
    doctor_clean(&lab).await;
    // netavark keeps no state of its own for a plugin's network (its --config is untouched).
    assert_eq!(std::fs::read_dir(&nv.config).unwrap().count(), 0);
}
