//! `direct-routes`: runners that share the value of a label route to each other directly;
//! every other peer goes via the hub.
//!
//! Settings (all optional):
//! - `label` (default `rack`): the label whose value must match.
//! - `egress` (default `runner-nat`): this runner's egress, `runner-nat` or `via-host`.
//!
//! A runner without the label routes everything via the hub.

use weir_plugin_sdk::prelude::*;

/// What `configure` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub label: String,
    pub egress: Egress,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            label: "rack".into(),
            egress: Egress::RunnerNat,
        }
    }
}

static SETTINGS: ConfigCell<Settings> = ConfigCell::new();

struct DirectRoutes;

impl Plugin for DirectRoutes {
    fn configure(config: Config) -> Result<(), String> {
        SETTINGS.set(Settings::parse(&config)?);
        Ok(())
    }
}

impl Router for DirectRoutes {
    fn route(request: RouteRequest, peers: &Peers) -> RouteDelta {
        routes(&SETTINGS.get().unwrap_or_default(), &request, peers)
    }
}

weir_plugin_sdk::export_router!(DirectRoutes);

impl Settings {
    pub fn parse(config: &[(String, String)]) -> Result<Self, String> {
        check_keys(config, &["label", "egress"])?;
        let mut s = Self::default();
        if let Some(v) = config_get(config, "label") {
            if v.trim().is_empty() {
                return Err("label must not be empty".into());
            }
            s.label = v.trim().to_string();
        }
        s.egress = match config_get(config, "egress").map(str::trim) {
            None | Some("runner-nat") => Egress::RunnerNat,
            Some("via-host") => Egress::ViaHost,
            Some(other) => {
                return Err(format!(
                    "egress must be \"runner-nat\" or \"via-host\", not {other:?}"
                ));
            }
        };
        Ok(s)
    }
}

/// What a change moves. When this runner joins: `direct` to the peers that share its label
/// value (one `names-with-label` query, O(matches)), everything else stays via the hub. When a peer
/// joins or changes: the path to that peer alone.
pub fn routes(settings: &Settings, request: &RouteRequest, peers: &impl PeerSet) -> RouteDelta {
    let mine = label(&request.runner.labels, &settings.label);
    match &request.change {
        RouteChange::Joined => RouteDelta {
            paths: match mine {
                Some(v) => peers
                    .names_with_label(&settings.label, v)
                    .into_iter()
                    .map(|name| (name, Path::Direct))
                    .collect(),
                None => Vec::new(),
            },
            egress: Some(settings.egress),
        },
        RouteChange::Peer(p) => {
            let path = match mine {
                Some(v) if label(&p.labels, &settings.label) == Some(v) => Path::Direct,
                _ => Path::ViaHub,
            };
            RouteDelta {
                paths: vec![(p.name.clone(), path)],
                egress: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn runner(name: &str, labels: &[(&str, &str)]) -> RunnerInfo {
        RunnerInfo {
            name: name.into(),
            id: 1,
            labels: pairs(labels),
            physical_ip: num("192.0.2.1".parse().unwrap()),
        }
    }

    fn peers() -> MemoryPeers {
        MemoryPeers::new(vec![
            runner("r2", &[("rack", "a")]),
            runner("r3", &[("rack", "b")]),
            runner("r4", &[]),
            runner("r5", &[("rack", "a"), ("zone", "z1")]),
        ])
    }

    fn joined(labels: &[(&str, &str)]) -> RouteRequest {
        RouteRequest {
            network: "default".into(),
            runner: runner("r1", labels),
            change: RouteChange::Joined,
        }
    }

    fn paths(d: &RouteDelta) -> Vec<(&str, Path)> {
        d.paths.iter().map(|(n, p)| (n.as_str(), *p)).collect()
    }

    #[test]
    fn same_rack_is_direct() {
        let d = routes(&Settings::default(), &joined(&[("rack", "a")]), &peers());
        assert_eq!(paths(&d), [("r2", Path::Direct), ("r5", Path::Direct)]);
        assert_eq!(d.egress, Some(Egress::RunnerNat));
    }

    #[test]
    fn a_joining_peer_gets_one_path() {
        let mut r = joined(&[("rack", "a")]);
        r.change = RouteChange::Peer(runner("r9", &[("rack", "a")]));
        let d = routes(&Settings::default(), &r, &peers());
        assert_eq!(paths(&d), [("r9", Path::Direct)]);
        assert_eq!(d.egress, None);
        r.change = RouteChange::Peer(runner("r9", &[("rack", "c")]));
        let d = routes(&Settings::default(), &r, &peers());
        assert_eq!(paths(&d), [("r9", Path::ViaHub)]);
    }

    #[test]
    fn unlabelled_runner_goes_via_the_hub() {
        let d = routes(&Settings::default(), &joined(&[("zone", "z1")]), &peers());
        assert!(d.paths.is_empty());
    }

    #[test]
    fn label_and_egress_are_configurable() {
        let s = Settings::parse(&pairs(&[("label", "zone"), ("egress", "via-host")])).unwrap();
        let d = routes(&s, &joined(&[("zone", "z1"), ("rack", "b")]), &peers());
        assert_eq!(paths(&d), [("r5", Path::Direct)]);
        assert_eq!(d.egress, Some(Egress::ViaHost));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(Settings::parse(&[]).unwrap(), Settings::default());
        assert!(Settings::parse(&pairs(&[("egress", "direct")])).is_err());
        assert!(Settings::parse(&pairs(&[("label", "")])).is_err());
        assert!(Settings::parse(&pairs(&[("lable", "rack")])).is_err());
    }
}
