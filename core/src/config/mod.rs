//! Configuration: built-in defaults < TOML file < `WEIR_<SECTION>__<KEY>` environment variables.
//!
//! Every struct refuses unknown keys, and every value has a type that validates itself while it
//! is read, so an error always names the key, the source it came from and why it was refused.
//! The daemon never starts on a configuration it only half understood.
//!
//! - [`schema`]: the sections and keys of the file, with their defaults
//! - [`values`]: value types that check themselves while read, and why a value was refused
//! - [`networks`]: the networks a configuration defines, with their interface names
//! - [`load`]: the sources, their precedence, and where each value came from
//! - [`validate`]: checks that involve more than one key

pub mod load;
pub mod networks;
pub mod schema;
pub mod validate;
pub mod values;

use std::path::Path;

pub use load::{ConfigError, DEFAULT_CONFIG_PATH, ENV_PREFIX, LoadedConfig};
pub use networks::{DEFAULT_NETWORK, NetworkNames, ResolvedNetwork, VM_NETWORK};
pub use schema::{
    AuditLevel, AuthConfig, Config, EgressMode, HostConfig, NetworkConfig, OnError, OverlayConfig,
    PluginConfig, PluginMode, PolicyConfig, ReservationConfig, RunnerConfig, TelemetryConfig,
};
pub use values::{
    ByteSize, Duration, EndpointError, IfName, Mtu, NetworkName, VXLAN_OVERHEAD, ValueError,
    check_ifname, check_otlp_endpoint,
};

/// Load and check the configuration. `file`: an explicit `--config`; when `None`,
/// [`DEFAULT_CONFIG_PATH`] is read if it exists.
pub fn load(file: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_from(file, Path::new(DEFAULT_CONFIG_PATH))
}

fn load_from(file: Option<&Path>, default_path: &Path) -> Result<LoadedConfig, ConfigError> {
    let loaded = load::read(file, default_path)?;
    validate::validate(&loaded)?;
    Ok(loaded)
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
