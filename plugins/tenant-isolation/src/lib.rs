//! `tenant-isolation`: workloads talk only to workloads of their own tenant and to the host;
//! wan egress only for workloads that are labelled for it.
//!
//! Settings (all optional):
//! - `tenant_label` (default `tenant`): the label naming a workload's tenant.
//! - `wan_label` (default `wan`): a workload whose label has the value `allow` may reach the wan.
//! - `untenanted` (default `allow`): a workload without a tenant label gets no rules and this
//!   default verdict (`allow` or `deny`).

use weir_plugin_sdk::prelude::*;

/// What `configure` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub tenant_label: String,
    pub wan_label: String,
    pub untenanted: Verdict,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tenant_label: "tenant".into(),
            wan_label: "wan".into(),
            untenanted: Verdict::Allow,
        }
    }
}

static SETTINGS: ConfigCell<Settings> = ConfigCell::new();

struct TenantIsolation;

impl Plugin for TenantIsolation {
    fn configure(config: Config) -> Result<(), String> {
        SETTINGS.set(Settings::parse(&config)?);
        Ok(())
    }
}

impl Firewall for TenantIsolation {
    fn rules(request: FirewallRequest) -> FirewallDecision {
        let settings = SETTINGS.get().unwrap_or_default();
        rules_for(&settings, &request.labels)
    }
}

weir_plugin_sdk::export_firewall!(TenantIsolation);

impl Settings {
    pub fn parse(config: &[(String, String)]) -> Result<Self, String> {
        check_keys(config, &["tenant_label", "wan_label", "untenanted"])?;
        let mut s = Self::default();
        for (key, slot) in [
            ("tenant_label", &mut s.tenant_label),
            ("wan_label", &mut s.wan_label),
        ] {
            if let Some(v) = config_get(config, key) {
                if v.trim().is_empty() {
                    return Err(format!("{key} must not be empty"));
                }
                *slot = v.trim().to_string();
            }
        }
        s.untenanted = match config_get(config, "untenanted").map(str::trim) {
            None | Some("allow") => Verdict::Allow,
            Some("deny") => Verdict::Deny,
            Some(other) => {
                return Err(format!(
                    "untenanted must be \"allow\" or \"deny\", not {other:?}"
                ));
            }
        };
        Ok(s)
    }
}

/// The rules of a workload carrying `labels`.
pub fn rules_for(settings: &Settings, labels: &[(String, String)]) -> FirewallDecision {
    let Some(tenant) = label(labels, &settings.tenant_label) else {
        return FirewallDecision {
            rules: vec![],
            default_verdict: settings.untenanted,
        };
    };
    let same_tenant = || Peer::Labels(vec![(settings.tenant_label.clone(), tenant.to_string())]);
    let mut rules = vec![
        allow(Direction::Ingress, same_tenant()),
        allow(Direction::Ingress, Peer::Host),
        allow(Direction::Egress, same_tenant()),
        allow(Direction::Egress, Peer::Host),
    ];
    if label(labels, &settings.wan_label) == Some("allow") {
        rules.push(allow(Direction::Egress, Peer::Wan));
    }
    FirewallDecision {
        rules,
        default_verdict: Verdict::Deny,
    }
}

fn allow(direction: Direction, peer: Peer) -> Rule {
    Rule {
        direction,
        peer,
        protocol: Protocol::Any,
        ports: vec![],
        verdict: Verdict::Allow,
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

    #[test]
    fn tenant_talks_to_its_tenant_and_the_host() {
        let d = rules_for(
            &Settings::default(),
            &pairs(&[("tenant", "blue"), ("app", "db")]),
        );
        let blue = Peer::Labels(pairs(&[("tenant", "blue")]));
        assert_eq!(d.default_verdict, Verdict::Deny);
        assert_eq!(
            d.rules,
            vec![
                allow(Direction::Ingress, blue.clone()),
                allow(Direction::Ingress, Peer::Host),
                allow(Direction::Egress, blue),
                allow(Direction::Egress, Peer::Host),
            ]
        );
    }

    #[test]
    fn wan_only_when_labelled_allow() {
        let s = Settings::default();
        let with = rules_for(&s, &pairs(&[("tenant", "blue"), ("wan", "allow")]));
        assert_eq!(with.rules.len(), 5);
        assert_eq!(with.rules[4], allow(Direction::Egress, Peer::Wan));
        let without = rules_for(&s, &pairs(&[("tenant", "blue"), ("wan", "deny")]));
        assert!(!without.rules.iter().any(|r| r.peer == Peer::Wan));
    }

    #[test]
    fn untenanted_workloads() {
        let d = rules_for(&Settings::default(), &pairs(&[("wan", "allow")]));
        assert_eq!(
            d,
            FirewallDecision {
                rules: vec![],
                default_verdict: Verdict::Allow
            }
        );
        let s = Settings::parse(&pairs(&[("untenanted", "deny")])).unwrap();
        let d = rules_for(&s, &[]);
        assert_eq!(
            d,
            FirewallDecision {
                rules: vec![],
                default_verdict: Verdict::Deny
            }
        );
    }

    #[test]
    fn label_keys_are_configurable() {
        let s = Settings::parse(&pairs(&[
            ("tenant_label", "team"),
            ("wan_label", "internet"),
        ]))
        .unwrap();
        let d = rules_for(
            &s,
            &pairs(&[("team", "red"), ("internet", "allow"), ("tenant", "blue")]),
        );
        assert_eq!(d.rules[0].peer, Peer::Labels(pairs(&[("team", "red")])));
        assert_eq!(d.rules[4].peer, Peer::Wan);
        assert_eq!(d.rules.len(), 5);
        // The default key no longer counts.
        let d = rules_for(&s, &pairs(&[("tenant", "blue")]));
        assert!(d.rules.is_empty());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(Settings::parse(&[]).unwrap(), Settings::default());
        assert!(Settings::parse(&pairs(&[("untenanted", "maybe")])).is_err());
        assert!(Settings::parse(&pairs(&[("tenant_label", " ")])).is_err());
        assert!(Settings::parse(&pairs(&[("tennant_label", "x")])).is_err());
    }
}
