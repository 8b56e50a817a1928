//! TCP throughput between workloads on two runners: (a) Weir's lab via the hub (two VXLAN
//! hops), (b) the same hub topology built by hand with `ip` in namespaces, (c) Weir with the
//! `direct-routes` router plugin (runners of one rack talk directly, one VXLAN hop). Each with
//! offloads on and off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::env::{self, NsGroup, Opts};
use crate::report::{Report, RunInfo};
use crate::stats::ratio;
use crate::table::Table;

pub const TITLE: &str = "Data path: TCP throughput between workloads on two runners";

/// One topology's results.
struct Throughput {
    /// Gbit/s with offloads on, then off.
    on: f64,
    off: f64,
    /// Router hops between the two workloads (64 − the TTL a ping answer arrives with).
    hops: u32,
}

/// What iperf3 runs between, in one topology.
struct Pair {
    /// Every namespace of the topology (offloads are switched in all of them).
    namespaces: Vec<PathBuf>,
    client: PathBuf,
    server: PathBuf,
    server_ip: String,
}

impl Pair {
    /// The hub topology's members (`path` names their namespaces), from `r1-w1` to `r2-w1`.
    fn of(path: impl Fn(&str) -> PathBuf, server_ip: String) -> Self {
        Self {
            namespaces: ["lan", "host", "r1", "r2", "r1-w1", "r2-w1"]
                .iter()
                .map(|m| path(m))
                .collect(),
            client: path("r1-w1"),
            server: path("r2-w1"),
            server_ip,
        }
    }
}

pub async fn run(opts: Opts, run: &RunInfo) -> Result<Report> {
    for tool in ["iperf3", "ethtool", "ip", "ping"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: apt-get install iperf3 ethtool (./scripts/bench.sh does)");
        }
    }
    let secs = opts.n(10, 3) as u32;
    println!("datapath: Weir via the hub (then without its nftables tables) …");
    let (hub, bare) = weir_hub(secs, false).await.context("Weir via the hub")?;
    let bare = bare.context("no figures without the tables")?;
    println!("datapath: hand-built hub …");
    let hand = hand_built(secs).await.context("hand-built hub")?;
    println!("datapath: Weir with direct-routes …");
    let (direct, _) = weir_hub(secs, true)
        .await
        .context("Weir with direct-routes")?;

    let mut r = Report::new("datapath", TITLE, opts, run);
    r.text(&format!(
        "`iperf3` TCP, one stream, {secs} s per figure (the first second omitted), from the workload on \
         runner 1 to the workload on runner 2, every namespace on this machine (so both ends share its 2 \
         cores with the kernel's forwarding work). **Weir via the hub**: a lab (`weir host`, two `weir runner`s, \
         one workload each), workload → runner 1 → `vxlan0` → host `vxkr1` → routed → `vxkr2` → runner 2 → \
         workload. **Hand-built hub**: the same namespaces, addresses, VNIs, MTU 1450 and `nolearning` VXLAN \
         links built with `ip` commands (and, like Weir's runners, no ICMP redirects), without Weir's nftables tables. \
         **Weir via the hub, tables removed** (a diagnostic, not a configuration): the same lab after \
         deleting Weir's tables `inet weir_host` and `inet weir_runner` (checked to be still absent after the \
         measurement). **Weir direct**: a lab whose host \
         loads `direct-routes` as its router plugin and whose runners share the label `rack = \"a\"`, so \
         runner 1 tunnels straight to runner 2. *Offloads on*: the links as the kernel creates them (TSO and GSO \
         on everywhere, GRO on bridges and VXLAN links, off on veths); *off*: `ethtool -K <dev> tso off gso off \
         gro off` on every link of every namespace of the topology."
    ));
    let mut t = Table::new(&["topology", "router hops", "offloads on", "offloads off"]);
    for (name, x) in [
        ("Weir via the hub (2 VXLAN hops)", &hub),
        ("hand-built hub (2 VXLAN hops)", &hand),
        ("Weir via the hub, its nftables tables removed", &bare),
        ("Weir direct-routes (1 VXLAN hop)", &direct),
    ] {
        t.row([
            name.to_string(),
            x.hops.to_string(),
            format!("{:.2} Gbit/s", x.on),
            format!("{:.2} Gbit/s", x.off),
        ]);
    }
    r.table(&t);
    let mut t = Table::new(&["ratio", "offloads on", "offloads off"]);
    t.row([
        "Weir hub / hand-built hub".to_string(),
        ratio(hub.on, hand.on),
        ratio(hub.off, hand.off),
    ]);
    t.row([
        "Weir hub without its tables / hand-built hub".to_string(),
        ratio(bare.on, hand.on),
        ratio(bare.off, hand.off),
    ]);
    t.row([
        "Weir direct / Weir hub".to_string(),
        ratio(direct.on, hub.on),
        ratio(direct.off, hub.off),
    ]);
    r.table(&t);
    r.text(
        "The hand-built hub has no netfilter rule at all; the tables-removed row shows what Weir's \
         tables cost a packet. The overlay's packets and VXLAN's own are not connection-tracked (raw \
         `notrack` rules; tracking would otherwise start as soon as a `nat` chain exists, and the runners' \
         masquerade needs one), so what remains is the hooks themselves: on its way a packet passes \
         Weir's chains about ten times — raw prerouting and output, forward, the `nat` postrouting hook, \
         the input filter that accepts VXLAN only from known peers — on the host and on both runners, \
         where bridged frames pass the inet hooks because `br_netfilter` is loaded. Taking the chains \
         out of a lab one kind at a time (offloads off, by hand, 2026-11-29): the `nat` and raw chains \
         together ≈ 18% of the throughput, the forward chains ≈ 7%, the input filter ≈ 3%. The raw rules \
         did not raise throughput (1.99 Gbit/s before they existed, 1.8–1.9 after, in separate runs): \
         they keep overlay flows out of the connection-tracking table rather than speed them up.",
    );
    Ok(r)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A two-runner lab with one workload each; with `direct`, the host loads `direct-routes` and
/// the runners share a rack, and the pair must route directly before anything is measured.
/// Via the hub, the lab is then measured again without Weir's nftables tables (second value).
async fn weir_hub(secs: u32, direct: bool) -> Result<(Throughput, Option<Throughput>)> {
    let mut spec = env::lab_spec(if direct { "dd" } else { "dh" })?;
    spec.runners = 2;
    spec.workloads_per_runner = 1;
    if direct {
        let path = env::plugin("direct_routes")?;
        spec.host_extra = env::plugin_toml("direct", &path, "router", "fallback", "");
        spec.runner_keys = "labels = { rack = \"a\" }\n".into();
    }
    let lab = env::lab_up(spec).await?;
    let server_ip = lab
        .address_of("r2-w1")
        .await
        .context("r2-w1 has no address")?
        .addr()
        .to_string();
    let pair = Pair::of(|m| lab.ns(m), server_ip);
    // Routes settle asynchronously after the runners' sessions start.
    let want_hops = if direct { 1 } else { 2 };
    env::wait_until(
        &format!("the workloads are {want_hops} router hop(s) apart"),
        Duration::from_secs(20),
        || hops(&pair.client, &pair.server_ip) == Some(want_hops),
    )
    .await?;
    env::settle().await;
    let with_tables = measure(&pair, secs, want_hops)?;
    if direct {
        return Ok((with_tables, None));
    }
    let tables = [
        ("host", "weir_host"),
        ("r1", "weir_runner"),
        ("r2", "weir_runner"),
    ];
    for (member, table) in tables {
        env::run_in(&lab.ns(member), "nft", &["delete", "table", "inet", table])?;
    }
    let without = measure(&pair, secs, want_hops)?;
    for (member, table) in tables {
        let out = env::output_in(&lab.ns(member), "nft", &["list", "table", "inet", table])?;
        if out.status.success() {
            bail!("{member} restored its table {table} during the measurement without it");
        }
    }
    Ok((with_tables, Some(without)))
}

/// The hub topology of the lab, built by hand: lan switch, host with `vxkr1`/`vxkr2`, two
/// runners with a bridge and `vxlan0`, one workload each.
async fn hand_built(secs: u32) -> Result<Throughput> {
    let g = NsGroup::new("hb");
    for m in ["lan", "host", "r1", "r2", "r1-w1", "r2-w1"] {
        g.create(m)?;
    }
    let ip = |ns: &str, args: &str| -> Result<()> {
        let mut full = vec!["-n".to_string(), g.name(ns)];
        full.extend(args.split_whitespace().map(str::to_string));
        let out = std::process::Command::new("ip")
            .args(&full)
            .output()
            .context("run ip")?;
        if !out.status.success() {
            bail!(
                "`ip {}` failed: {}",
                full.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    // The underlay switch and the members' ports.
    ip("lan", "link add br0 type bridge")?;
    ip("lan", "addr add 192.0.2.254/24 dev br0")?;
    ip("lan", "link set br0 up")?;
    for (m, addr) in [
        ("host", "192.0.2.1"),
        ("r1", "192.0.2.11"),
        ("r2", "192.0.2.12"),
    ] {
        ip(
            "lan",
            &format!(
                "link add p-{m} type veth peer name eth0 netns {}",
                g.name(m)
            ),
        )?;
        ip("lan", &format!("link set p-{m} master br0 up"))?;
        ip(m, &format!("addr add {addr}/24 dev eth0"))?;
        ip(m, "link set eth0 up")?;
        forwarding(&g.path(m))?;
    }
    // The host: one tunnel per runner, routing between them.
    for (r, vni, remote, addr) in [
        (1, 101, "192.0.2.11", "10.128.64.254/18"),
        (2, 102, "192.0.2.12", "10.128.128.254/18"),
    ] {
        ip(
            "host",
            &format!(
                "link add vxkr{r} mtu 1450 type vxlan id {vni} local 192.0.2.1 remote {remote} dstport 4789 nolearning"
            ),
        )?;
        ip("host", &format!("addr add {addr} dev vxkr{r}"))?;
        ip("host", &format!("link set vxkr{r} up"))?;
    }
    // The runners: bridge, tunnel to the host, route to the overlay, one workload.
    for (r, vni, local, gw, hostside, wl) in [
        (
            1,
            101,
            "192.0.2.11",
            "10.128.64.1/18",
            "10.128.64.254",
            "10.128.64.2/18",
        ),
        (
            2,
            102,
            "192.0.2.12",
            "10.128.128.1/18",
            "10.128.128.254",
            "10.128.128.2/18",
        ),
    ] {
        let rn = format!("r{r}");
        let wn = format!("r{r}-w1");
        ip(&rn, "link add kohaku-overlay mtu 1450 type bridge")?;
        ip(&rn, &format!("addr add {gw} dev kohaku-overlay"))?;
        ip(&rn, "link set kohaku-overlay up")?;
        ip(
            &rn,
            &format!(
                "link add vxlan0 mtu 1450 type vxlan id {vni} local {local} remote 192.0.2.1 dstport 4789 nolearning"
            ),
        )?;
        ip(&rn, "link set vxlan0 master kohaku-overlay up")?;
        // As Weir's runner does: routing back out of the bridge must not redirect the workload
        // to the host's address (the packet takes both router hops).
        no_redirects(&g.path(&rn))?;
        ip(
            &rn,
            &format!("route add 10.128.0.0/12 via {hostside} dev kohaku-overlay"),
        )?;
        ip(
            &rn,
            &format!(
                "link add wk1 mtu 1450 type veth peer name eth0 netns {}",
                g.name(&wn)
            ),
        )?;
        ip(&rn, "link set wk1 master kohaku-overlay up")?;
        ip(&wn, &format!("addr add {wl} dev eth0"))?;
        ip(&wn, "link set eth0 up")?;
        let gw_ip = gw.split('/').next().unwrap_or_default();
        ip(&wn, &format!("route add default via {gw_ip}"))?;
    }
    let pair = Pair::of(|m| g.path(m), "10.128.128.2".into());
    env::wait_until(
        "the hand-built workloads reach each other",
        Duration::from_secs(10),
        || hops(&pair.client, &pair.server_ip).is_some(),
    )
    .await?;
    env::settle().await;
    measure(&pair, secs, 2)
}

/// `net.ipv4.ip_forward = 1` inside a namespace.
fn forwarding(ns: &Path) -> Result<()> {
    weir::dataplane::netns::run_in(ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1"))?
        .with_context(|| format!("enable forwarding in {}", ns.display()))
}

/// `send_redirects = 0` globally and on the bridge, inside a runner namespace.
fn no_redirects(ns: &Path) -> Result<()> {
    weir::dataplane::netns::run_in(ns, || {
        ["all", "kohaku-overlay"].iter().try_for_each(|conf| {
            std::fs::write(
                format!("/proc/sys/net/ipv4/conf/{conf}/send_redirects"),
                b"0",
            )
        })
    })?
    .with_context(|| format!("disable redirects in {}", ns.display()))
}

/// Throughput with offloads on, then off.
fn measure(pair: &Pair, secs: u32, want_hops: u32) -> Result<Throughput> {
    let hops = hops(&pair.client, &pair.server_ip).context("no ping answer")?;
    if hops != want_hops {
        bail!("the workloads are {hops} router hops apart, expected {want_hops}");
    }
    // As created first; then off; then back as they were (the lab may be measured again).
    let before = Offloads::read(&pair.namespaces)?;
    let on = iperf(pair, secs)?;
    before.all_off()?;
    let off = iperf(pair, secs)?;
    before.restore()?;
    println!("  {hops} hops: {on:.2} Gbit/s offloads on, {off:.2} Gbit/s off");
    Ok(Throughput { on, off, hops })
}

/// Router hops from `client` to `ip` (64 − the TTL of a ping answer), or `None` without one.
fn hops(client: &Path, ip: &str) -> Option<u32> {
    let out = env::output_in(client, "ping", &["-c", "1", "-W", "2", ip]).ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ttl: u32 = text
        .split("ttl=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    64u32.checked_sub(ttl)
}

/// The TSO, GSO and GRO settings of every link (but `lo`) of some namespaces.
struct Offloads {
    /// (namespace, device, [tso, gso, gro] on?)
    links: Vec<(PathBuf, String, [bool; 3])>,
}

/// `ethtool -K` names and `ethtool -k` names of the three features.
const FEATURES: [(&str, &str); 3] = [
    ("tso", "tcp-segmentation-offload"),
    ("gso", "generic-segmentation-offload"),
    ("gro", "generic-receive-offload"),
];

impl Offloads {
    fn read(namespaces: &[PathBuf]) -> Result<Self> {
        let mut links = Vec::new();
        for ns in namespaces {
            let out = env::run_in(ns, "ip", &["-o", "link", "show"])?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            for dev in text
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
                .filter(|n| !n.is_empty() && n != "lo")
            {
                let out = env::run_in(ns, "ethtool", &["-k", &dev])?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let on = |long: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{long}: ")))
                        .is_some_and(|v| v.starts_with("on"))
                };
                let state = FEATURES.map(|(_, long)| on(long));
                links.push((ns.clone(), dev, state));
            }
        }
        Ok(Self { links })
    }

    fn set(&self, state: impl Fn(&[bool; 3]) -> [bool; 3]) -> Result<()> {
        for (ns, dev, now) in &self.links {
            let want = state(now);
            let mut args = vec!["-K".to_string(), dev.clone()];
            for ((short, _), on) in FEATURES.iter().zip(want) {
                args.push(short.to_string());
                args.push(if on { "on" } else { "off" }.to_string());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // A feature a device cannot change (a fixed one) is not an error.
            env::output_in(ns, "ethtool", &args)?;
        }
        Ok(())
    }

    fn all_off(&self) -> Result<()> {
        self.set(|_| [false; 3])
    }

    fn restore(&self) -> Result<()> {
        self.set(|was| *was)
    }
}

/// One iperf3 TCP run from `client` to a one-off server; Gbit/s received.
fn iperf(pair: &Pair, secs: u32) -> Result<f64> {
    let _server = env::spawn_in(&pair.server, "iperf3", &["-s", "-1", "-B", &pair.server_ip])?;
    let t = secs.to_string();
    let mut last = String::new();
    // The server needs a moment to listen.
    for _ in 0..50 {
        let out = env::output_in(
            &pair.client,
            "iperf3",
            &["-c", &pair.server_ip, "-t", &t, "-O", "1", "-J"],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        last = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).to_string());
        if !last.contains("refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 to {} failed: {}", pair.server_ip, last.trim())
}
