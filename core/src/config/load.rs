//! Where the configuration comes from: built-in defaults < TOML file < `WEIR_<SECTION>__<KEY>`
//! environment variables, and which source gave each value (every error names it).

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::schema::Config;

/// The file read when no `--config` is given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/weir/weir.toml";
/// Environment variables of the form `WEIR_<SECTION>__<KEY>` override the file.
pub const ENV_PREFIX: &str = "WEIR_";
const DEFAULTS_NAME: &str = "built-in defaults";

/// A configuration problem: which key, from which source, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The effective configuration plus where each value came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    figment: Figment,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
}

impl LoadedConfig {
    /// Describe where `key` (e.g. `overlay.mtu`) got its value.
    pub fn source_of(&self, key: &str) -> String {
        describe_source(self.figment.find_metadata(key), key)
    }

    /// Whether `key` was set by the file or the environment (not left at its default).
    pub fn is_explicit(&self, key: &str) -> bool {
        self.figment
            .find_metadata(key)
            .is_some_and(|md| md.name != DEFAULTS_NAME)
    }

    /// A refusal of `key`'s value, naming its source.
    pub fn invalid(&self, key: &str, why: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid(vec![format!("{key} ({}): {why}", self.source_of(key))])
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The built-in defaults, as a figment provider with a recognisable name.
pub(super) struct Defaults;

impl Provider for Defaults {
    fn metadata(&self) -> Metadata {
        Metadata::named(DEFAULTS_NAME)
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(Config::default()).data()
    }
}

/// Read the sources: the built-in defaults, then `file` (an explicit `--config`; when `None`,
/// `default_path` if it exists), then the environment. Values are checked one by one here;
/// checks across keys are [`super::validate`]'s.
pub(super) fn read(file: Option<&Path>, default_path: &Path) -> Result<LoadedConfig, ConfigError> {
    let path = match file {
        Some(p) => {
            if !p.is_file() {
                return Err(ConfigError::File {
                    path: p.to_path_buf(),
                    reason: "does not exist or is not a regular file".into(),
                });
            }
            Some(p.to_path_buf())
        }
        None => default_path.is_file().then(|| default_path.to_path_buf()),
    };
    let mut figment = Figment::from(Defaults);
    if let Some(p) = &path {
        // Read it ourselves so a missing or unreadable file is an error, never silently empty.
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::File {
                path: p.clone(),
                reason: format!("not valid TOML: {}", e.message()),
            });
        }
        figment = figment.merge(Toml::file_exact(p));
    }
    // Only section-qualified variables are configuration; WEIR_LOG, WEIR_HOST, … are not.
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    extract(figment, path)
}

/// Read the merged sources into a [`Config`].
pub(super) fn extract(
    figment: Figment,
    file: Option<PathBuf>,
) -> Result<LoadedConfig, ConfigError> {
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Invalid(describe_errors(&figment, e)))?;
    Ok(LoadedConfig {
        config,
        figment,
        file,
    })
}

fn describe_errors(figment: &Figment, err: figment::Error) -> Vec<String> {
    err.into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            if let figment::error::Kind::UnknownField(field, _) = &e.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = path.join(".");
            // Prefer the provider that supplied this exact key; fall back to the error's tag.
            let md = figment.find_metadata(&key).or(e.metadata.as_ref());
            let why = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => format!(
                    "unknown key {field:?} (known keys here: {})",
                    expected.join(", ")
                ),
                other => other.to_string(),
            };
            if key.is_empty() {
                format!("configuration ({}): {why}", describe_source(md, &key))
            } else {
                format!("{key} ({}): {why}", describe_source(md, &key))
            }
        })
        .collect()
}

fn describe_source(md: Option<&Metadata>, key: &str) -> String {
    let Some(md) = md else {
        return "not set".into();
    };
    if md.name == DEFAULTS_NAME {
        return DEFAULTS_NAME.into();
    }
    if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
        return format!("file {}", path.display());
    }
    if md.name.contains("environment") {
        return format!("environment variable {}", env_var_for(key));
    }
    md.name.to_string()
}

/// The environment variable that supplied `key` (or a key below it), in its own spelling.
fn env_var_for(key: &str) -> String {
    let as_key = |var: &str| {
        var.strip_prefix(ENV_PREFIX)
            .map(|rest| rest.to_ascii_lowercase().replace("__", "."))
    };
    std::env::vars()
        .map(|(var, _)| var)
        .find(|var| as_key(var).is_some_and(|k| k == key || k.starts_with(&format!("{key}."))))
        .unwrap_or_else(|| {
            format!(
                "{ENV_PREFIX}{}",
                key.to_ascii_uppercase().replace('.', "__")
            )
        })
}
