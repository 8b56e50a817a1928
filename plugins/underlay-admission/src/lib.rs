//! `underlay-admission`: runners may join only from allowed underlay networks.
//!
//! Settings:
//! - `allowed_cidrs` (required): comma-separated CIDRs, e.g. `"192.0.2.8/30,10.0.0.0/8"`.
//!
//! A runner whose physical IP lies in none of them is denied; every other runner gets the
//! built-in id. Addresses are always the built-in `next-free`.

use weir_plugin_sdk::prelude::*;

static ALLOWED: ConfigCell<Vec<Cidr>> = ConfigCell::new();

struct UnderlayAdmission;

impl Plugin for UnderlayAdmission {
    fn configure(config: Config) -> Result<(), String> {
        let allowed = parse_settings(&config)?;
        log::info(format!("admitting runners from {}", list(&allowed)));
        ALLOWED.set(allowed);
        Ok(())
    }
}

impl Allocator for UnderlayAdmission {
    fn assign_runner(request: RunnerRequest) -> RunnerDecision {
        match ALLOWED.with(|allowed| admit(allowed, ip(request.physical_ip))) {
            Some(decision) => decision,
            None => RunnerDecision::Deny("underlay-admission was not configured".into()),
        }
    }

    fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
        AddressDecision::NextFree
    }
}

weir_plugin_sdk::export_allocator!(UnderlayAdmission);

/// The allowed CIDRs from the settings.
pub fn parse_settings(config: &[(String, String)]) -> Result<Vec<Cidr>, String> {
    check_keys(config, &["allowed_cidrs"])?;
    let value = config_get(config, "allowed_cidrs").ok_or(
        "allowed_cidrs is required: comma-separated CIDRs, e.g. \"192.0.2.8/30,10.0.0.0/8\"",
    )?;
    parse_cidr_list(value).map_err(|e| format!("allowed_cidrs: {e}"))
}

/// `builtin` if `physical_ip` lies in one of `allowed`, else deny.
pub fn admit(allowed: &[Cidr], physical_ip: std::net::Ipv4Addr) -> RunnerDecision {
    if allowed.iter().any(|c| c.contains(physical_ip)) {
        RunnerDecision::Builtin
    } else {
        RunnerDecision::Deny(format!(
            "physical IP {physical_ip} is outside the allowed underlay {}",
            list(allowed)
        ))
    }
}

fn list(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_are_required_and_checked() {
        let ok = parse_settings(&cfg(&[("allowed_cidrs", "192.0.2.8/30, 10.0.0.0/8")])).unwrap();
        assert_eq!(list(&ok), "192.0.2.8/30,10.0.0.0/8");
        assert!(
            parse_settings(&[])
                .unwrap_err()
                .contains("allowed_cidrs is required")
        );
        assert!(
            parse_settings(&cfg(&[("allowed_cidrs", "")]))
                .unwrap_err()
                .contains("empty")
        );
        assert!(parse_settings(&cfg(&[("allowed_cidrs", " ")])).is_err());
        assert!(parse_settings(&cfg(&[("allowed_cidrs", "192.0.2.8/33")])).is_err());
        assert!(parse_settings(&cfg(&[("allowed_cidrs", "10.0.0.0/8,,192.0.2.0/24")])).is_err());
        assert!(parse_settings(&cfg(&[("allowed_cidrs", "10.0.0.0/8"), ("alowed", "x")])).is_err());
    }

    #[test]
    fn admits_only_inside_the_underlay() {
        let allowed = parse_cidr_list("192.0.2.8/30,10.0.0.0/8").unwrap();
        let a = |s: &str| s.parse().unwrap();
        assert_eq!(admit(&allowed, a("192.0.2.9")), RunnerDecision::Builtin);
        assert_eq!(admit(&allowed, a("10.20.30.40")), RunnerDecision::Builtin);
        assert_eq!(
            admit(&allowed, a("192.0.2.12")),
            RunnerDecision::Deny(
                "physical IP 192.0.2.12 is outside the allowed underlay 192.0.2.8/30,10.0.0.0/8"
                    .into()
            )
        );
    }
}
