//! The plugin's settings (`[policy.plugins.config]`), as handed to `configure`.

use std::sync::Mutex;

/// The value of setting `key`, if the operator gave it (the first one if given twice).
pub fn config_get<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Refuse settings this plugin does not know, so that a typo is reported at load instead of
/// being silently ignored.
pub fn check_keys(config: &[(String, String)], known: &[&str]) -> Result<(), String> {
    match config.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some((k, _)) if known.is_empty() => {
            Err(format!("unknown setting {k:?}: this plugin takes none"))
        }
        Some((k, _)) => Err(format!(
            "unknown setting {k:?} (known: {})",
            known.join(", ")
        )),
    }
}

/// Where a plugin keeps what `configure` decided, for its hooks to read.
///
/// ```
/// use weir_plugin_sdk::ConfigCell;
/// static LABEL: ConfigCell<String> = ConfigCell::new();
/// LABEL.set("rack".to_string());
/// assert_eq!(LABEL.get().as_deref(), Some("rack"));
/// ```
pub struct ConfigCell<T>(Mutex<Option<T>>);

impl<T> ConfigCell<T> {
    /// An empty cell (nothing configured yet).
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Store the settings (replacing earlier ones).
    pub fn set(&self, value: T) {
        *self.lock() = Some(value);
    }

    /// Run `f` on the settings, if `configure` stored any.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.lock().as_ref().map(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        // A panic traps the whole instance, so a poisoned lock is never seen again; still,
        // the data is plain settings and stays valid.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Clone> ConfigCell<T> {
    /// A copy of the settings, if `configure` stored any.
    pub fn get(&self) -> Option<T> {
        self.lock().clone()
    }
}

impl<T> Default for ConfigCell<T> {
    fn default() -> Self {
        Self::new()
    }
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
    fn get_finds_the_first_value() {
        let c = cfg(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(config_get(&c, "a"), Some("1"));
        assert_eq!(config_get(&c, "b"), Some("2"));
        assert_eq!(config_get(&c, "c"), None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let c = cfg(&[("label", "rack"), ("lable", "x")]);
        assert_eq!(
            check_keys(&c, &["label", "egress"]).unwrap_err(),
            "unknown setting \"lable\" (known: label, egress)"
        );
        assert!(check_keys(&cfg(&[("label", "rack")]), &["label"]).is_ok());
        assert!(check_keys(&c, &[]).unwrap_err().contains("takes none"));
    }

    #[test]
    fn cell_holds_the_latest_settings() {
        let cell: ConfigCell<u32> = ConfigCell::new();
        assert_eq!(cell.get(), None);
        cell.set(1);
        cell.set(2);
        assert_eq!(cell.get(), Some(2));
        assert_eq!(cell.with(|v| v * 10), Some(20));
    }
}
