//! Policy: every policy decision — which id a runner gets, which address a workload
//! gets, which traffic is allowed, which path traffic takes — goes through here.
//!
//! - [`host`]: the policy host ([`PolicyHost`]): which plugin serves which hook, every decision
//! - [`load`]: loading one plugin version (a component per hook, or a gRPC service)
//! - [`reload`]: hot reload with an atomic swap
//! - [`validate`]: a decision checked against its request
//! - [`fault`]: why a decision could not be used, and why an operation was refused
//! - [`wasm`]: WebAssembly components (wasmtime), sandboxed with a deadline and a memory cap
//! - [`grpc`]: out-of-process `weir.v1.PolicyPlugin` services
//! - [`builtin`]: the built-in policy, the default and the fallback
//! - [`audit`]: the JSON-lines decision log
//! - [`types`]: the requests and decisions of the plugin interface
//!
//! A plugin serves one or more hooks in `enforce` mode (its decision is applied) or `monitor`
//! mode (it runs beside the enforcing policy; differing decisions are logged, never applied).
//! Output is validated against the request: an address outside the subnet, an id outside the
//! plan, a malformed or oversized rule set is a fault like a trap or a missed deadline, and the
//! plugin's `on_error` applies: `fallback` (the built-in policy decides) or `deny`.
//! Hot reload compiles, instantiates and configures the new version first, then swaps it in
//! atomically: a broken new version never replaces a working one.

pub mod audit;
pub mod builtin;
pub mod fault;
pub mod grpc;
pub mod host;
pub mod load;
pub mod reload;
pub mod validate;
pub mod wasm;

use std::time::Duration;

pub use fault::{Fault, FaultReport, Refusal};
pub use host::{PluginStatus, PolicyError, PolicyHost, ReloadOutcome};
pub use load::PluginLoadError;
pub use validate::validate;

/// The resource limits of one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub deadline: Duration,
    pub memory: usize,
    pub max_output: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            memory: 16 << 20,
            max_output: 10_000,
        }
    }
}
