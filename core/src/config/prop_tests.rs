//! Properties of the loader: whatever a user writes for a key, it is read or refused naming
//! that key, and what `weir config show` prints reads back the same.

#![allow(clippy::result_large_err)]

use std::net::{Ipv4Addr, SocketAddr};

use figment::Figment;
use figment::providers::{Format, Toml};

use super::values::MTU_RANGE;
use super::values::prop_tests::{duration_like, size_like};
use super::*;
use crate::network::NetworkDef;
use crate::plan::{self, Plan};
use crate::prop_support::{config, edgy_u32, lit};
use proptest::prelude::*;

/// The loader on TOML text, without a file or the environment (other tests set `WEIR_*`
/// variables in their jails; these properties must not see them).
fn load_text(text: &str) -> Result<LoadedConfig, ConfigError> {
    let loaded = load::extract(
        Figment::from(load::Defaults).merge(Toml::string(text)),
        None,
    )?;
    validate::validate(&loaded)?;
    Ok(loaded)
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn err_text(r: Result<LoadedConfig, ConfigError>) -> Option<String> {
    r.err().map(|e| e.to_string())
}

/// A TOML value of any kind (what a user may write for a key).
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-100i64..70_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| quoted(&s)),
        prop_oneof![
            Just("auto"),
            Just(" AUTO "),
            Just("Auto"),
            Just(" 1500"),
            Just("1e3")
        ]
        .prop_map(quoted),
        (-100i64..70_000).prop_map(|n| quoted(&format!(" {n} "))),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
    ]
}

fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        lit("http://"),
        lit("https://"),
        lit("unix://"),
        lit("unix:"),
        lit("HTTP://"),
        lit("ftp://"),
        lit(""),
        "[a-z]{1,5}:/{0,3}",
    ];
    let host = prop_oneof![
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        Just("[::1]".to_string()),
        Just("localhost".to_string()),
        Just(String::new()),
        "[a-z0-9.@:\\[\\]%-]{0,12}",
        ".{0,6}",
    ];
    let port = prop_oneof![
        Just(String::new()),
        any::<u16>().prop_map(|p| format!(":{p}")),
        "[:0-9a-z]{0,8}",
    ];
    let path = prop_oneof![Just(String::new()), "/[ -~]{0,10}", ".{0,5}"];
    (scheme, host, port, path).prop_map(|(s, h, p, x)| format!("{s}{h}{p}{x}"))
}

/// An address plan, valid or not.
fn plan_spec() -> impl Strategy<Value = String> {
    prop_oneof![
        (edgy_u32(), 0u32..=33, 0u32..=18, 0u32..=32)
            .prop_map(|(b, p, n, s)| format!("{}/{p}/{n}/{s}", Ipv4Addr::from(b))),
        (1u32..=23, edgy_u32()).prop_flat_map(|(p, b)| {
            let lo = 1u32.max(2u32.saturating_sub(p));
            let hi = 16u32.min(24 - p);
            (lo..=hi).prop_map(move |n| format!("{}/{p}/{n}/{}", Ipv4Addr::from(b), 32 - p - n))
        }),
        ".{0,20}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn prop_config_duration_keys_name_the_key(
        key in proptest::sample::select(vec![
            ("runner", "heartbeat_interval"),
            ("host", "heartbeat_timeout"),
            ("telemetry", "export_interval"),
            ("policy", "watch_interval"),
        ]),
        s in prop_oneof![duration_like(), any::<String>()],
    ) {
        let (section, field) = key;
        let got = load_text(&format!("[{section}]\n{field} = {}\n", quoted(&s)));
        match s.parse::<Duration>() {
            Ok(d) => {
                let c = got.map_err(|e| TestCaseError::fail(e.to_string()))?.config;
                let value = match section {
                    "runner" => c.runner.heartbeat_interval,
                    "host" => c.host.heartbeat_timeout,
                    "telemetry" => c.telemetry.export_interval,
                    _ => c.policy.watch_interval,
                };
                prop_assert_eq!(value, d);
            }
            Err(_) => {
                let e = err_text(got).unwrap_or_default();
                prop_assert!(e.contains(&format!("{section}.{field}")), "{}", e);
            }
        }
    }

    #[test]
    fn prop_config_reservation_ttls_are_ordered(
        ttls in proptest::collection::vec(1u64..4000, 3),
    ) {
        let text = format!(
            "[reservations]\nmin_ttl = \"{}s\"\ndefault_ttl = \"{}s\"\nmax_ttl = \"{}s\"\n",
            ttls[0], ttls[1], ttls[2]
        );
        let ordered = ttls[0] <= ttls[1] && ttls[1] <= ttls[2];
        match load_text(&text) {
            Ok(c) => {
                prop_assert!(ordered);
                let r = &c.config.reservations;
                prop_assert!(r.min_ttl <= r.default_ttl && r.default_ttl <= r.max_ttl);
            }
            Err(e) => {
                prop_assert!(!ordered, "{}", e);
                prop_assert!(e.to_string().contains("reservations.default_ttl"), "{}", e);
            }
        }
    }


    #[test]
    fn prop_config_mtu_accepts_only_its_range_or_auto(v in toml_value()) {
        match load_text(&format!("[overlay]\nmtu = {v}\n")) {
            Ok(c) => {
                let mtu = c.config.overlay.mtu;
                if let Mtu::Fixed(m) = mtu {
                    prop_assert!(MTU_RANGE.contains(&m), "{} from {}", m, v);
                }
                // What `weir config show` prints reads back the same.
                let back = load_text(&c.to_toml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back.config.overlay.mtu, mtu);
            }
            Err(e) => prop_assert!(e.to_string().contains("overlay.mtu"), "{}: {}", v, e),
        }
        if let Ok(n) = v.trim().parse::<i64>() {
            let ok = load_text(&format!("[overlay]\nmtu = {n}\n")).is_ok();
            prop_assert_eq!(ok, (576..=65_535).contains(&n), "mtu = {}", n);
        }
    }

    #[test]
    fn prop_config_interface_names_follow_the_kernel_rules(
        s in prop_oneof![".{0,20}", "[a-z0-9./: -]{0,17}", any::<String>()]
    ) {
        match s.parse::<IfName>() {
            Ok(n) => {
                prop_assert!((1..=15).contains(&n.as_str().len()));
                prop_assert!(n.as_str() != "." && n.as_str() != "..");
                prop_assert!(!n.as_str().chars().any(|c| "/:\0".contains(c) || c.is_whitespace()));
                prop_assert_eq!(n.to_string(), s.clone());
            }
            Err(e) => prop_assert!(e.to_string().contains(&format!("{s:?}")), "{}", e),
        }
        if let Err(e) = load_text(&format!("[overlay]\nrunner_bridge = {}\n", quoted(&s))) {
            prop_assert!(e.to_string().contains("overlay.runner_bridge"), "{}", e);
        }
    }

    #[test]
    fn prop_config_network_names_give_usable_interface_names(
        name in prop_oneof!["[a-z][a-z0-9]{0,9}", "[a-zA-Z0-9_-]{0,12}", any::<String>()],
        plan in plan_spec(),
    ) {
        let shaped = (1..=10).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        prop_assert_eq!(name.parse::<NetworkName>().is_ok(), shaped);
        let text = format!(
            "[[networks]]\nname = {}\nsubnet = {}\nvxlan_id_base = 100\n",
            quoted(&name),
            quoted(&plan)
        );
        match load_text(&text) {
            Ok(c) => {
                prop_assert!(shaped);
                let plan: Plan = plan.parse().map_err(|e: plan::PlanError| TestCaseError::fail(e.to_string()))?;
                for n in c.config.resolved_networks() {
                    let longest = |p: &str| plan::tunnel_name(p, plan.max_runners());
                    for ifname in [
                        n.names.host_device.clone(), n.names.runner_tunnel.clone(),
                        n.names.runner_bridge.clone(), longest(&n.names.tunnel_prefix),
                        longest(&n.names.direct_prefix),
                    ] {
                        prop_assert!(check_ifname(&ifname).is_ok(), "{}", ifname);
                    }
                }
            }
            Err(e) => prop_assert!(e.to_string().contains("networks"), "{}", e),
        }
    }

    #[test]
    fn prop_config_plan_key_is_checked_and_named(spec in plan_spec(), base in edgy_u32()) {
        let text = format!("[overlay]\nsubnet = {}\nvxlan_id_base = {base}\n", quoted(&spec));
        let parsed = spec.parse::<Plan>();
        match load_text(&text) {
            Ok(c) => {
                let o = &c.config.overlay;
                prop_assert_eq!(Ok(o.subnet), parsed);
                prop_assert!(o.subnet.check_vni_base(o.vxlan_id_base).is_ok());
                let back = load_text(&c.to_toml()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back.config, c.config);
            }
            Err(e) => {
                let e = e.to_string();
                if parsed.is_err() {
                    prop_assert!(e.contains("overlay.subnet"), "{}", e);
                } else {
                    prop_assert!(e.contains("overlay."), "{}", e);
                }
            }
        }
    }

    #[test]
    fn prop_config_isolated_subnets_leave_room_for_workloads(
        addr in edgy_u32(),
        prefix in prop_oneof![0u8..=32, 29u8..=32],
        junk in ".{0,12}",
        use_junk in proptest::bool::weighted(0.1),
    ) {
        let cidr = if use_junk { junk } else { format!("{}/{prefix}", Ipv4Addr::from(addr)) };
        let text = format!("[overlay]\nenabled = false\nisolated_subnet = {}\n", quoted(&cidr));
        match load_text(&text) {
            Ok(c) => {
                let nets = NetworkDef::from_config(&c.config, 1450);
                let sub = nets.first().and_then(|n| n.runner_subnet(None));
                let sub = sub.ok_or_else(|| TestCaseError::fail("no isolated subnet"))?;
                prop_assert!(sub.subnet.contains(&sub.gateway), "gateway {} outside {}", sub.gateway, sub.subnet);
                let mut pool = crate::ipam::AddressPool::new(sub.subnet, &[]);
                let first = pool.take_next().map_err(|e| TestCaseError::fail(format!("{cidr}: {e}")))?;
                prop_assert!(sub.subnet.contains(&first) && first != sub.gateway);
                prop_assert!(first != sub.subnet.network() && first != sub.subnet.broadcast());
            }
            Err(e) => prop_assert!(e.to_string().contains("overlay.isolated_subnet"), "{}: {}", cidr, e),
        }
    }

    #[test]
    fn prop_config_otlp_endpoints_name_a_host(url in prop_oneof![url_like(), any::<String>()]) {
        if check_otlp_endpoint(&url).is_ok() {
            prop_assert!(url.starts_with("http://") || url.starts_with("https://"));
            let uri = url.parse::<http::Uri>().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(uri.host().is_some_and(|h| !h.is_empty()), "{:?} has no host", url);
        }
        let got = load_text(&format!("[telemetry]\notlp_endpoint = {}\n", quoted(&url)));
        if let Some(e) = err_text(got) {
            prop_assert!(e.contains("telemetry.otlp_endpoint"), "{}", e);
        }
    }

    #[test]
    fn prop_config_host_urls_never_panic(url in prop_oneof![url_like(), any::<String>()]) {
        // runner.host and a plugin's endpoint go through this check.
        let opts = crate::transport::ChannelOptions::default();
        match crate::transport::endpoint(&url, opts) {
            Ok(_) => prop_assert!(url.starts_with("http://") || url.starts_with("unix:")),
            Err(e) => prop_assert!(e.to_string().contains(&format!("{url:?}")), "{}", e),
        }
    }

    #[test]
    fn prop_config_scalar_keys_are_bounded_and_named(
        name in prop_oneof![".{0,10}", any::<String>(), "[ -~]{250,256}"],
        ratio in prop_oneof![any::<f64>(), -0.5f64..1.5],
        listen in prop_oneof![url_like(), any::<String>(), any::<std::net::SocketAddr>().prop_map(|a| a.to_string())],
    ) {
        let got = load_text(&format!("[runner]\nname = {}\n", quoted(&name)));
        let ok = !name.is_empty() && name.len() <= 253 && !name.chars().any(char::is_control);
        match got {
            Ok(c) => {
                prop_assert!(ok);
                prop_assert_eq!(c.config.runner.name.as_deref(), Some(name.as_str()));
            }
            Err(e) => {
                prop_assert!(!ok);
                prop_assert!(e.to_string().contains("runner.name"), "{}", e);
            }
        }
        let got = load_text(&format!("[telemetry]\nsampling_ratio = {}\n", toml::Value::Float(ratio)));
        match got {
            Ok(c) => prop_assert!((0.0..=1.0).contains(&c.config.telemetry.sampling_ratio)),
            Err(e) => {
                prop_assert!(!(0.0..=1.0).contains(&ratio));
                prop_assert!(e.to_string().contains("telemetry.sampling_ratio"), "{}", e);
            }
        }
        match load_text(&format!("[host]\nlisten = {}\n", quoted(&listen))) {
            Ok(c) => prop_assert_eq!(Ok(c.config.host.listen), listen.parse::<SocketAddr>()),
            Err(e) => prop_assert!(e.to_string().contains("host.listen"), "{}", e),
        }
    }

    #[test]
    fn prop_config_plugin_entries_are_checked_and_named(
        name in prop_oneof!["[a-zA-Z0-9_-]{1,63}", ".{0,70}"],
        hooks in proptest::collection::vec(
            prop_oneof![Just("allocator".to_string()), Just("firewall".to_string()),
                        Just("router".to_string()), ".{0,8}"], 0..4),
        memory in prop_oneof![size_like(), any::<String>()],
        max_output in prop_oneof![Just(0i64), any::<i64>(), 0i64..20_000],
    ) {
        let hook_list = hooks.iter().map(|h| quoted(h)).collect::<Vec<_>>().join(", ");
        let text = format!(
            "[[policy.plugins]]\nname = {}\npath = \"/p.wasm\"\nhooks = [{hook_list}]\nmode = \"monitor\"\nmemory = {}\nmax_output = {max_output}\n",
            quoted(&name), quoted(&memory)
        );
        match load_text(&text) {
            Ok(c) => {
                let p = &c.config.policy.plugins[0];
                prop_assert!(!p.name.is_empty() && p.name.len() <= 63);
                prop_assert!(p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
                prop_assert!(!p.hooks.is_empty());
                prop_assert!(p.hooks.iter().all(|h| Hook::parse(h).is_some()), "{:?}", p.hooks);
                prop_assert!(p.max_output >= 1);
                prop_assert_eq!(Ok(p.memory), memory.parse::<ByteSize>());
            }
            Err(e) => prop_assert!(e.to_string().contains("policy"), "{}", e),
        }
    }
}

use crate::decision::Hook;
