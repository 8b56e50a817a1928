//! The OpenTelemetry resource every span and metric of a daemon carries.
//!
//! From lowest to highest precedence:
//! 1. Weir's own: `service.name` (`weir-host` / `weir-runner`), `service.version`,
//!    `service.instance.id` (a runner's `runner.name`, else the hostname, which is also the
//!    runner's default name; the host's hostname) and `host.name` (the hostname), plus the
//!    SDK's `telemetry.sdk.*`;
//! 2. `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`, any attribute, these included);
//! 3. `OTEL_SERVICE_NAME`;
//! 4. `telemetry.service_name`.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};

use super::Role;
use crate::config::Config;

/// The resource of a daemon of `role` with this configuration.
pub fn build(config: &Config, role: Role) -> Resource {
    let host = hostname();
    let instance = match role {
        Role::Runner => config.runner.name.clone().or_else(|| host.clone()),
        Role::Host => host.clone(),
    }
    // Without a hostname, the process at least differs from the others on this machine.
    .unwrap_or_else(|| format!("{}-{}", role.service_name(), std::process::id()));
    let mut own = vec![
        KeyValue::new("service.name", role.service_name()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance),
    ];
    if let Some(h) = host {
        own.push(KeyValue::new("host.name", h));
    }
    let mut b = Resource::builder_empty()
        .with_attributes(own)
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ]);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
    {
        b = b.with_service_name(name);
    }
    if let Some(name) = &config.telemetry.service_name {
        b = b.with_service_name(name.clone());
    }
    b.build()
}

fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Key;

    fn get(r: &Resource, key: &'static str) -> Option<String> {
        r.get(&Key::from_static_str(key)).map(|v| v.to_string())
    }

    #[test]
    fn runners_are_told_apart_by_name_and_the_configured_service_name_wins() {
        let mut c = Config::default();
        c.runner.name = Some("r1".into());
        let r1 = build(&c, Role::Runner);
        c.runner.name = Some("r2".into());
        let r2 = build(&c, Role::Runner);
        assert_eq!(get(&r1, "service.instance.id").as_deref(), Some("r1"));
        assert_eq!(get(&r2, "service.instance.id").as_deref(), Some("r2"));
        assert_eq!(get(&r1, "service.name").as_deref(), Some("weir-runner"));
        assert_eq!(
            get(&r1, "service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(get(&r1, "host.name"), hostname());
        let host = build(&c, Role::Host);
        assert_eq!(get(&host, "service.name").as_deref(), Some("weir-host"));
        assert_eq!(get(&host, "service.instance.id"), hostname());
        c.telemetry.service_name = Some("edge-runner".into());
        assert_eq!(
            get(&build(&c, Role::Runner), "service.name").as_deref(),
            Some("edge-runner")
        );
    }
}
