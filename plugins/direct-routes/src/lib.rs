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
    fn route(request: RouteRequest) -> RouteDecision {
        routes(&SETTINGS.get().unwrap_or_default(), &request)
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

/// The path to every peer: `direct` when it shares this runner's label value, else `via-hub`.
pub fn routes(settings: &Settings, request: &RouteRequest) -> RouteDecision {
    let mine = label(&request.labels, &settings.label);
    let peers = request
        .peers
        .iter()
        .map(|p| {
            let path = match mine {
                Some(v) if label(&p.labels, &settings.label) == Some(v) => Path::Direct,
                _ => Path::ViaHub,
            };
            (p.name.clone(), path)
        })
        .collect();
    RouteDecision {
        peers,
        egress: settings.egress,
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

    fn peer(name: &str, labels: &[(&str, &str)]) -> PeerRunner {
        PeerRunner {
            name: name.into(),
            labels: pairs(labels),
            physical_ip: "192.0.2.1".into(),
        }
    }

    fn request(labels: &[(&str, &str)]) -> RouteRequest {
        RouteRequest {
            network: "default".into(),
            runner: "r1".into(),
            labels: pairs(labels),
            peers: vec![
                peer("r2", &[("rack", "a")]),
                peer("r3", &[("rack", "b")]),
                peer("r4", &[]),
                peer("r5", &[("rack", "a"), ("zone", "z1")]),
            ],
        }
    }

    fn paths(d: &RouteDecision) -> Vec<(&str, Path)> {
        d.peers.iter().map(|(n, p)| (n.as_str(), *p)).collect()
    }

    #[test]
    fn same_rack_is_direct() {
        let d = routes(&Settings::default(), &request(&[("rack", "a")]));
        assert_eq!(
            paths(&d),
            [
                ("r2", Path::Direct),
                ("r3", Path::ViaHub),
                ("r4", Path::ViaHub),
                ("r5", Path::Direct)
            ]
        );
        assert_eq!(d.egress, Egress::RunnerNat);
    }

    #[test]
    fn unlabelled_runner_goes_via_the_hub() {
        let d = routes(&Settings::default(), &request(&[("zone", "z1")]));
        assert!(d.peers.iter().all(|(_, p)| *p == Path::ViaHub));
        assert_eq!(d.peers.len(), 4);
    }

    #[test]
    fn label_and_egress_are_configurable() {
        let s = Settings::parse(&pairs(&[("label", "zone"), ("egress", "via-host")])).unwrap();
        let d = routes(&s, &request(&[("zone", "z1"), ("rack", "b")]));
        assert_eq!(
            paths(&d),
            [
                ("r2", Path::ViaHub),
                ("r3", Path::ViaHub),
                ("r4", Path::ViaHub),
                ("r5", Path::Direct)
            ]
        );
        assert_eq!(d.egress, Egress::ViaHost);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(Settings::parse(&[]).unwrap(), Settings::default());
        assert!(Settings::parse(&pairs(&[("egress", "direct")])).is_err());
        assert!(Settings::parse(&pairs(&[("label", "")])).is_err());
        assert!(Settings::parse(&pairs(&[("lable", "rack")])).is_err());
    }
}
