//! Weir: a VXLAN hub-and-spoke container overlay whose policy decisions are made by sandboxed
//! plugins.
//!
//! Data flows one way: [`config`] → [`plan`] → store → policy → dataplane → kernel. The binary
//! (`src/main.rs`) is a thin shell over [`cli`].

pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod decision;
pub mod failpoint;
pub mod hub;
pub mod ipam;
pub mod lab;
pub mod logging;
pub mod netns_path;
pub mod network;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod transport;

/// Shared settings of the property tests (`prop_tests` modules beside each parser).
#[cfg(test)]
pub(crate) mod prop_support {
    use proptest::strategy::{Just, Strategy};
    use proptest::test_runner::Config;

    /// Cases per property in an ordinary `cargo test`; `PROPTEST_CASES` overrides it for a
    /// long run (`PROPTEST_CASES=1000000 cargo test -p weir --lib prop_`).
    pub const DEFAULT_CASES: u32 = 512;

    /// The runner settings: [`DEFAULT_CASES`] unless `PROPTEST_CASES` is set. Failures are
    /// not persisted to files: each one found becomes a named regression `#[test]`.
    pub fn config() -> Config {
        let mut c = if std::env::var_os("PROPTEST_CASES").is_some() {
            Config::default()
        } else {
            Config::with_cases(DEFAULT_CASES)
        };
        c.failure_persistence = None;
        c
    }

    /// A fixed string, for mixing with regex strategies (which give `String`s).
    pub fn lit(s: &'static str) -> Just<String> {
        Just(s.to_string())
    }

    /// A `u32` biased toward the edges (0, 1, the top of the range, powers of two and their
    /// neighbours), where arithmetic on addresses overflows if it is going to.
    pub fn edgy_u32() -> impl Strategy<Value = u32> {
        proptest::prop_oneof![
            3 => proptest::num::u32::ANY,
            1 => (0u32..=32, -3i64..=3)
                .prop_map(|(bit, d)| ((1i64 << bit) + d).rem_euclid(1 << 32) as u32),
            1 => (0u32..=300).prop_map(|d| u32::MAX - d),
            1 => Just(0u32),
        ]
    }
}
