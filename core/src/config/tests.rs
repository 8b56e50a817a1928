//! The loader's behaviour: precedence, sources named in errors, every check across keys.

#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use super::*;
use figment::Jail;

fn load_in_jail(jail: &Jail, file: Option<&str>) -> Result<LoadedConfig, ConfigError> {
    let path = file.map(|f| jail.directory().join(f));
    load_from(path.as_deref(), &jail.directory().join("absent.toml"))
}

#[test]
fn defaults_are_kohakuriver_compatible() {
    Jail::expect_with(|jail| {
        let c = load_in_jail(jail, None).unwrap();
        let o = &c.config.overlay;
        assert!(o.enabled);
        assert_eq!(o.subnet.to_string(), "10.128.0.0/12/6/14");
        assert_eq!(
            (o.vxlan_id_base, o.vxlan_port, o.mtu),
            (100, 4789, Mtu::Fixed(1450))
        );
        assert_eq!(o.host_device.as_str(), "kohaku-host");
        assert_eq!(o.runner_bridge.as_str(), "kohaku-overlay");
        assert_eq!(c.config.host.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(c.config.runner.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.source_of("overlay.mtu"), "built-in defaults");
        assert!(!c.is_explicit("overlay.mtu"));
        Ok(())
    });
}

#[test]
fn precedence_default_then_file_then_env() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "weir.toml",
            "[overlay]\nmtu = 1400\nvxlan_port = 4790\n[runner]\nheartbeat_interval = \"500ms\"\n",
        )?;
        jail.set_env("WEIR_OVERLAY__VXLAN_PORT", "4800");
        // Variables without a section are not configuration and must not be refused.
        jail.set_env("WEIR_LOG", "debug");
        let c = load_in_jail(jail, Some("weir.toml")).unwrap();
        assert_eq!(c.config.overlay.mtu, Mtu::Fixed(1400), "file beats default");
        assert_eq!(c.config.overlay.vxlan_port, 4800, "env beats file");
        assert_eq!(c.config.overlay.vxlan_id_base, 100, "default stays");
        assert_eq!(
            c.config.runner.heartbeat_interval,
            Duration::from_millis(500)
        );
        assert!(c.source_of("overlay.mtu").starts_with("file "));
        assert_eq!(
            c.source_of("overlay.vxlan_port"),
            "environment variable WEIR_OVERLAY__VXLAN_PORT"
        );
        assert!(c.is_explicit("overlay.mtu") && !c.is_explicit("overlay.subnet"));
        Ok(())
    });
}

#[test]
fn env_alone_overrides_defaults() {
    Jail::expect_with(|jail| {
        jail.set_env("WEIR_OVERLAY__SUBNET", "10.0.0.0/22/2/8");
        jail.set_env("WEIR_OVERLAY__MTU", "auto");
        jail.set_env("WEIR_HOST__HEARTBEAT_TIMEOUT", "2m");
        let c = load_in_jail(jail, None).unwrap();
        assert_eq!(c.config.overlay.subnet.max_runners(), 3);
        assert_eq!(c.config.overlay.mtu, Mtu::Auto);
        assert_eq!(c.config.host.heartbeat_timeout, Duration::from_secs(120));
        Ok(())
    });
}

fn error_of(jail: &Jail, toml: &str) -> String {
    jail.create_file("bad.toml", toml).unwrap();
    load_in_jail(jail, Some("bad.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn runner_netns_allow_defaults_validates_and_becomes_a_policy() {
    Jail::expect_with(|jail| {
        let c = load_in_jail(jail, None).unwrap();
        assert_eq!(
            crate::dataplane::netns::NetnsPolicy::from_config(&c.config.runner),
            crate::dataplane::netns::NetnsPolicy::default()
        );
        jail.create_file(
            "ok.toml",
            "[runner]\nnetns_allow = [\"/srv/ns/\", \"/run/k8s\"]\nnetns_allow_pids = false\n",
        )?;
        let c = load_in_jail(jail, Some("ok.toml")).unwrap();
        let p = crate::dataplane::netns::NetnsPolicy::from_config(&c.config.runner);
        assert_eq!(
            p.allowed_prefixes,
            vec![PathBuf::from("/srv/ns/"), PathBuf::from("/run/k8s")]
        );
        assert!(!p.allow_proc_pids);
        for (bad, why) in [
            ("run/netns", "not an absolute path"),
            ("/run/../etc", "\"..\" component"),
            ("/run//netns", "empty component"),
            ("/", "allow every path"),
            ("/proc/", "runner.netns_allow_pids"),
        ] {
            let e = error_of(jail, &format!("[runner]\nnetns_allow = [{bad:?}]\n"));
            assert!(
                e.contains("runner.netns_allow") && e.contains(why),
                "{bad}: {e}"
            );
            assert!(e.contains("bad.toml"), "{e}");
        }
        Ok(())
    });
}

#[test]
fn unknown_keys_are_refused_with_key_and_source() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[overlay]\nmtuu = 1400\n");
        assert!(e.contains("overlay.mtuu"), "{e}");
        assert!(e.contains("bad.toml"), "{e}");
        assert!(e.contains("unknown key"), "{e}");
        let e = error_of(jail, "[overlays]\nmtu = 1400\n");
        assert!(e.contains("overlays") && e.contains("unknown key"), "{e}");
        Ok(())
    });
}

#[test]
fn call_limits_default_and_are_bounded() {
    Jail::expect_with(|jail| {
        let c = load_in_jail(jail, None).unwrap();
        assert_eq!(c.config.host.max_concurrent_calls, 256);
        assert_eq!(c.config.host.unauthenticated_calls_per_second, 20);
        let e = error_of(jail, "[host]\nmax_concurrent_calls = 0\n");
        assert!(
            e.contains("host.max_concurrent_calls (file")
                && e.contains("bad.toml")
                && e.contains("0 is out of range (allowed: 1 to 65536)"),
            "{e}"
        );
        let e = error_of(jail, "[host]\nunauthenticated_calls_per_second = 0\n");
        assert!(
            e.contains("host.unauthenticated_calls_per_second") && e.contains("allowed: 1 to"),
            "{e}"
        );
        let e = error_of(jail, "[host]\nmax_concurrent_calls = -3\n");
        assert!(e.contains("host.max_concurrent_calls"), "{e}");
        jail.set_env("WEIR_HOST__UNAUTHENTICATED_CALLS_PER_SECOND", "5");
        let c = load_in_jail(jail, None).unwrap();
        assert_eq!(c.config.host.unauthenticated_calls_per_second, 5);
        Ok(())
    });
}

#[test]
fn unknown_env_keys_are_refused_naming_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("WEIR_OVERLAY__NOPE", "1");
        let e = load_in_jail(jail, None).unwrap_err().to_string();
        assert!(e.contains("overlay.nope"), "{e}");
        assert!(e.contains("WEIR_OVERLAY__NOPE"), "{e}");
        jail.clear_env();
        jail.set_env("WEIR_NOSECTION__KEY", "1");
        let e = load_in_jail(jail, None).unwrap_err().to_string();
        assert!(
            e.starts_with("nosection (environment variable WEIR_NOSECTION__KEY)"),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn bad_values_are_refused_with_key_source_and_reason() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[overlay]\nsubnet = \"10.128.0.0/12/6/15\"\n");
        assert!(
            e.contains("overlay.subnet") && e.contains("must be 32") && e.contains("bad.toml"),
            "{e}"
        );
        let e = error_of(jail, "[overlay]\nmtu = 100\n");
        assert!(
            e.contains("overlay.mtu") && e.contains("allowed: 576..=65535"),
            "{e}"
        );
        let e = error_of(jail, "[overlay]\nmtu = \"big\"\n");
        assert!(e.contains("overlay.mtu") && e.contains("\"big\""), "{e}");
        let e = error_of(jail, "[overlay]\nvxlan_port = 70000\n");
        assert!(e.contains("overlay.vxlan_port"), "{e}");
        let e = error_of(jail, "[runner]\nheartbeat_interval = \"soon\"\n");
        assert!(
            e.contains("runner.heartbeat_interval") && e.contains("500ms"),
            "{e}"
        );
        let e = error_of(jail, "[host]\nreachable_address = \"192.0.2\"\n");
        assert!(e.contains("host.reachable_address"), "{e}");
        let e = error_of(
            jail,
            "[overlay]\nrunner_bridge = \"a-very-long-bridge-name\"\n",
        );
        assert!(
            e.contains("overlay.runner_bridge") && e.contains("1 to 15 bytes"),
            "{e}"
        );
        let e = error_of(jail, "[overlay]\nenabled = \"yes please\"\n");
        assert!(e.contains("overlay.enabled"), "{e}");
        Ok(())
    });
}

#[test]
fn bad_env_values_name_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("WEIR_OVERLAY__MTU", "huge");
        let e = load_in_jail(jail, None).unwrap_err().to_string();
        assert!(
            e.contains("overlay.mtu") && e.contains("WEIR_OVERLAY__MTU"),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn cross_field_checks() {
    Jail::expect_with(|jail| {
        let e = error_of(
            jail,
            "[overlay]\nsubnet = \"10.0.0.0/8/16/8\"\nvxlan_id_base = 16777000\n",
        );
        assert!(
            e.contains("overlay.vxlan_id_base") && e.contains("bad.toml"),
            "{e}"
        );
        let e = error_of(jail, "[overlay]\ntunnel_prefix = \"longtunnelpref\"\n");
        assert!(e.contains("overlay.tunnel_prefix"), "{e}");
        let e = error_of(jail, "[overlay]\nrunner_bridge = \"vxlan0\"\n");
        assert!(e.contains("already used"), "{e}");
        Ok(())
    });
}

const TWO_NETWORKS: &str = "[[networks]]\nname = \"private\"\nsubnet = \"10.128.0.0/12/6/14\"\nvxlan_id_base = 100\n[[networks]]\nname = \"public\"\nsubnet = \"198.51.100.0/22/2/8\"\nvxlan_id_base = 1000\nmasquerade = false\negress = \"via-host\"\n";

#[test]
fn a_vm_bridge_is_a_network_of_its_own_in_isolated_mode_only() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "vm.toml",
            "[overlay]\nenabled = false\nvm_subnet = \"10.200.0.0/24\"\n",
        )?;
        let c = load_in_jail(jail, Some("vm.toml")).unwrap().config;
        let nets = c.resolved_networks();
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[1].name, "vm");
        assert_eq!(nets[1].names.runner_bridge, "kohaku-br0");
        assert_eq!(
            nets[1].isolated_subnet,
            Some("10.200.0.0/24".parse().unwrap())
        );
        // With the overlay on, VMs attach to the overlay: no second network.
        jail.create_file("on.toml", "[overlay]\nvm_subnet = \"10.200.0.0/24\"\n")?;
        let c = load_in_jail(jail, Some("on.toml")).unwrap().config;
        assert_eq!(c.resolved_networks().len(), 1);
        let e = error_of(
            jail,
            "[overlay]\nenabled = false\nvm_subnet = \"172.30.5.0/24\"\n",
        );
        assert!(
            e.contains("overlay.vm_subnet") && e.contains("overlaps overlay.isolated_subnet"),
            "{e}"
        );
        let e = error_of(
            jail,
            "[overlay]\nenabled = false\nvm_subnet = \"10.200.0.0/24\"\nvm_bridge = \"kohakuriver-net\"\n",
        );
        assert!(e.contains("kohakuriver-net"), "{e}");
        Ok(())
    });
}

#[test]
fn kohakuriver_naming_gives_its_several_network_names() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "kr.toml",
            &format!("[overlay]\nnaming = \"kohakuriver\"\n{TWO_NETWORKS}")
                .replace("\"public\"", "\"publicnet1\""),
        )?;
        let c = load_in_jail(jail, Some("kr.toml")).unwrap().config;
        let names: Vec<_> = c
            .resolved_networks()
            .into_iter()
            .map(|n| {
                let n = n.names;
                (
                    n.host_device,
                    n.tunnel_prefix,
                    n.runner_tunnel,
                    n.runner_bridge,
                )
            })
            .collect();
        let own = |a: &str, b: &str, c: &str, d: &str| {
            (a.to_string(), b.to_string(), c.to_string(), d.to_string())
        };
        assert_eq!(
            names,
            [
                own("kohaku-host", "vx0_", "vxlan-private", "kohaku-private"),
                // Cut to 15 bytes, as KohakuRiver cuts them.
                own("kohaku-host", "vx1_", "vxlan-publicnet", "kohaku-publicne"),
            ]
        );
        Ok(())
    });
}

#[test]
fn several_networks_resolve_with_derived_names() {
    Jail::expect_with(|jail| {
        jail.create_file("nets.toml", TWO_NETWORKS)?;
        let c = load_in_jail(jail, Some("nets.toml")).unwrap().config;
        let nets = c.resolved_networks();
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0].name, "private");
        assert_eq!(nets[0].egress, EgressMode::RunnerNat);
        assert!(nets[0].masquerade);
        assert_eq!(nets[1].egress, EgressMode::ViaHost);
        assert!(!nets[1].masquerade);
        let n = &nets[1].names;
        assert_eq!(
            (
                n.host_device.as_str(),
                n.tunnel_prefix.as_str(),
                n.runner_tunnel.as_str(),
                n.runner_bridge.as_str(),
                n.direct_prefix.as_str()
            ),
            (
                "wh-public",
                "vx-public-",
                "vx-public",
                "wb-public",
                "vd-public-"
            )
        );
        // A network named "default" keeps KohakuRiver's names.
        jail.create_file(
            "default.toml",
            &TWO_NETWORKS.replace("\"private\"", "\"default\""),
        )?;
        let c = load_in_jail(jail, Some("default.toml")).unwrap().config;
        let d = &c.resolved_networks()[0].names;
        assert_eq!(
            (
                d.host_device.as_str(),
                d.tunnel_prefix.as_str(),
                d.runner_tunnel.as_str(),
                d.runner_bridge.as_str()
            ),
            ("kohaku-host", "vxkr", "vxlan0", "kohaku-overlay")
        );
        // Without [[networks]], [overlay] is the one network "default".
        let c = load_in_jail(jail, None).unwrap().config;
        assert_eq!(c.resolved_networks().len(), 1);
        assert_eq!(c.resolved_networks()[0].name, DEFAULT_NETWORK);
        Ok(())
    });
}

#[test]
fn conflicting_networks_are_refused_naming_both() {
    Jail::expect_with(|jail| {
        let overlap = TWO_NETWORKS.replace("198.51.100.0/22/2/8", "10.130.0.0/16/4/12");
        let e = error_of(jail, &overlap);
        assert!(
            e.contains("\"private\" and \"public\"")
                && e.contains("overlap")
                && e.contains("10.128.0.0/12"),
            "{e}"
        );
        let vnis = TWO_NETWORKS.replace("vxlan_id_base = 1000", "vxlan_id_base = 150");
        let e = error_of(jail, &vnis);
        assert!(
            e.contains("\"private\" and \"public\"")
                && e.contains("VNI ranges 101-163 and 151-153"),
            "{e}"
        );
        let names = format!("{TWO_NETWORKS}runner_bridge = \"wb-private\"\n");
        let e = error_of(jail, &names);
        assert!(
            e.contains("\"private\" and \"public\"") && e.contains("wb-private"),
            "{e}"
        );
        let twice = TWO_NETWORKS.replace("\"public\"", "\"private\"");
        let e = error_of(jail, &twice);
        assert!(e.contains("two networks are named \"private\""), "{e}");
        let e = error_of(jail, &TWO_NETWORKS.replace("\"public\"", "\"Public-1\""));
        assert!(e.contains("network name \"Public-1\""), "{e}");
        let long = TWO_NETWORKS
            .replace("\"public\"", "\"publicnet1\"")
            .replace("/22/2/8", "/16/8/8");
        let e = error_of(jail, &long.replace("198.51.100.0", "172.16.0.0"));
        assert!(
            e.contains("tunnel_prefix") && e.contains("shorter name"),
            "{e}"
        );
        let both = format!("[overlay]\nsubnet = \"10.0.0.0/16/4/12\"\n{TWO_NETWORKS}");
        let e = error_of(jail, &both);
        assert!(
            e.contains("overlay.subnet") && e.contains("[[networks]]"),
            "{e}"
        );
        Ok(())
    });
}

#[test]
fn telemetry_settings_are_checked() {
    Jail::expect_with(|jail| {
        let e = error_of(jail, "[telemetry]\nsampling_ratio = 1.5\n");
        assert!(
            e.contains("telemetry.sampling_ratio") && e.contains("between 0.0"),
            "{e}"
        );
        let e = error_of(jail, "[telemetry]\notlp_endpoint = \"collector:4317\"\n");
        assert!(
            e.contains("telemetry.otlp_endpoint") && e.contains("http://"),
            "{e}"
        );
        let e = error_of(jail, "[telemetry]\nexport_interval = \"0s\"\n");
        assert!(e.contains("telemetry.export_interval"), "{e}");
        let e = error_of(jail, "[telemetry]\nprometheus_listen = \"localhost\"\n");
        assert!(e.contains("telemetry.prometheus_listen"), "{e}");
        jail.create_file(
            "ok.toml",
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.25\nprometheus_listen = \"127.0.0.1:19464\"\n",
        )?;
        let c = load_in_jail(jail, Some("ok.toml"))
            .unwrap()
            .config
            .telemetry;
        assert_eq!(c.sampling_ratio, 0.25);
        assert_eq!(
            c.prometheus_listen,
            Some("127.0.0.1:19464".parse().unwrap())
        );
        Ok(())
    });
}

/// Regressions found by `prop_config_isolated_subnets_leave_room_for_workloads`: a /30,
/// /31 or /32 isolated subnet left no workload address, and 255.255.255.255/32 overflowed
/// computing the bridge address.
#[test]
fn isolated_subnets_too_small_for_workloads_are_refused() {
    Jail::expect_with(|jail| {
        for cidr in [
            "0.0.0.0/30",
            "10.0.0.0/31",
            "255.255.255.255/32",
            "0.0.0.0/0",
        ] {
            let e = error_of(
                jail,
                &format!("[overlay]\nenabled = false\nisolated_subnet = \"{cidr}\"\n"),
            );
            assert!(
                e.contains("overlay.isolated_subnet") && e.contains("/1 to /29"),
                "{cidr}: {e}"
            );
        }
        jail.create_file(
            "ok.toml",
            "[overlay]\nenabled = false\nisolated_subnet = \"172.30.0.0/29\"\n",
        )?;
        assert!(load_in_jail(jail, Some("ok.toml")).is_ok());
        Ok(())
    });
}

/// Regression found by `prop_config_otlp_endpoints_name_a_host`: `http://:0` passed.
#[test]
fn otlp_endpoints_without_a_host_are_refused() {
    for url in ["http://:0", "http://:4317", "https://user@:4317/"] {
        assert_eq!(
            check_otlp_endpoint(url),
            Err(EndpointError::NoHost),
            "{url}"
        );
    }
    assert!(check_otlp_endpoint("http://127.0.0.1:4317").is_ok());
    assert!(check_otlp_endpoint("https://collector.example:4317").is_ok());
}

#[test]
fn missing_or_broken_files_are_errors() {
    Jail::expect_with(|jail| {
        let e = load_in_jail(jail, Some("nope.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.toml") && e.contains("does not exist"),
            "{e}"
        );
        let e = error_of(jail, "[overlay\n");
        assert!(e.contains("not valid TOML"), "{e}");
        Ok(())
    });
}

#[test]
fn show_roundtrips() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "weir.toml",
            "[overlay]\nmtu = \"auto\"\n[runner]\nlabels = { rack = \"a\" }\n",
        )?;
        let c = load_in_jail(jail, Some("weir.toml")).unwrap();
        let shown = c.to_toml();
        jail.create_file("shown.toml", &shown)?;
        let again = load_in_jail(jail, Some("shown.toml")).unwrap();
        assert_eq!(again.config, c.config, "{shown}");
        assert!(shown.contains("mtu = \"auto\""), "{shown}");
        Ok(())
    });
}

#[test]
fn a_host_listening_beyond_loopback_needs_tls_or_an_explicit_allowance() {
    Jail::expect_with(|jail| {
        let host = |jail: &Jail, toml: &str| {
            jail.create_file("weir.toml", toml).unwrap();
            validate::validate_host(&load_in_jail(jail, Some("weir.toml")).unwrap())
        };
        // The default listener (0.0.0.0:7700) without TLS: refused, naming the keys.
        let e = validate::validate_host(&load_in_jail(jail, None).unwrap())
            .unwrap_err()
            .to_string();
        for key in [
            "host.listen (built-in defaults)",
            "0.0.0.0:7700",
            "host.tls_cert",
            "host.tls_key",
            "host.allow_plaintext = true",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let e = host(
            jail,
            "[host]\nlisten = \"192.0.2.1:7700\"\ntls_cert = \"/c.pem\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("host.listen (file"), "{e}");
        // Loopback, TLS, or the allowance (then a warning naming its source).
        for ok in [
            "[host]\nlisten = \"127.0.0.1:7700\"\n",
            "[host]\nlisten = \"[::1]:7700\"\n",
            "[host]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n",
        ] {
            assert_eq!(host(jail, ok).unwrap(), None, "{ok}");
        }
        let warning = host(jail, "[host]\nallow_plaintext = true\n")
            .unwrap()
            .expect("a warning");
        assert!(
            warning.contains("host.allow_plaintext = true (file")
                && warning.contains("0.0.0.0:7700")
                && warning.contains("clear text"),
            "{warning}"
        );
        jail.set_env("WEIR_HOST__ALLOW_PLAINTEXT", "true");
        assert!(
            validate::validate_host(&load_in_jail(jail, None).unwrap())
                .unwrap()
                .unwrap()
                .contains("WEIR_HOST__ALLOW_PLAINTEXT")
        );
        // A runner reading the same file is not concerned: the general checks pass.
        jail.clear_env();
        assert!(load_in_jail(jail, None).is_ok());
        Ok(())
    });
}
