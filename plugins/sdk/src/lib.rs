//! # Weir plugin SDK
//!
//! Guest-side bindings and helpers for Weir's policy plugins: WebAssembly components (WASI
//! preview 2) implementing one of the worlds of `wit/policy.wit` (`weir:policy@0.2.0`).
//!
//! A plugin is a `cdylib` crate that implements [`Plugin`] (its settings) and one hook trait
//! ([`Allocator`], [`Firewall`] or [`Router`]) on a unit struct, then names that struct in the
//! matching export macro:
//!
//! ```no_run
//! use weir_plugin_sdk::prelude::*;
//!
//! struct EveryoneWelcome;
//!
//! impl Plugin for EveryoneWelcome {
//!     fn configure(_config: Config) -> Result<(), String> {
//!         Ok(())
//!     }
//! }
//!
//! impl Allocator for EveryoneWelcome {
//!     fn assign_runner(_request: RunnerRequest) -> RunnerDecision {
//!         RunnerDecision::Builtin
//!     }
//!     fn assign_address(_request: AddressRequest, _pool: &Pool) -> AddressDecision {
//!         AddressDecision::NextFree
//!     }
//! }
//!
//! weir_plugin_sdk::export_allocator!(EveryoneWelcome);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` that comes out is
//! already a component. The export macros name `weir_plugin_sdk` by that name, so depend on the
//! SDK without renaming it.
//!
//! A panic inside a hook is reported through the host's `log` (level error) and then traps the
//! instance: the host sees a contained fault, never a half-made decision.
//!
//! Addresses cross the interface as numbers (`u32`); [`ip`] and [`num`] convert, and
//! [`Cidr`] takes a WIT `cidr` with `Cidr::from`. The address pool and the peer set are host
//! resources ([`Pool`], [`Peers`]) borrowed for one call: write the decision against the
//! [`FreePool`] and [`PeerSet`] traits, and unit-test it with [`MemoryPool`] and
//! [`MemoryPeers`]. The helpers ([`label`], [`has_labels`], [`Cidr`], [`config_get`], [`log`],
//! …) are plain Rust and work on the host target too, so a plugin's decision logic can be
//! unit-tested with `cargo test`.

pub mod allocation;
mod config;
mod labels;
pub mod log;
mod net;
pub mod peers;

pub use allocation::{FreePool, MemoryPool, highest_free, lowest_free};
pub use config::{ConfigCell, check_keys, config_get};
pub use labels::{has_labels, label};
pub use net::{Addresses, Cidr, addresses, format_ipv4, ip, num, parse_cidr_list, parse_ipv4};
pub use peers::{MemoryPeers, PeerSet};

/// Generated bindings (wit-bindgen), one module per SDK world.
///
/// Why not one module per policy world: every policy world is `import host; export plugin;
/// export <hook>`, and wit-bindgen defines the public export macro of an exported interface at
/// the crate root under a name derived from the interface alone
/// (`__export_weir_policy_plugin_0_2_0_cabi`). Generating `allocator-plugin`,
/// `firewall-plugin` and `router-plugin` in one crate therefore defines the `plugin` macro three
/// times (and `with:` cannot share exports). So `sdk/wit/sdk.wit` re-slices the policy worlds
/// without changing them: [`base`](bindings::base) generates `types`, `host` and the `plugin`
/// export once, and the three `*-hooks` worlds each generate one hook export, with `with:`
/// pointing their `types` at the base module, so every plugin shares one set of types. The
/// export macros emit the base world plus one hook world; `wasm-component-ld` unions their
/// type sections into exactly `allocator-plugin`, `firewall-plugin` or `router-plugin`.
///
/// With `pub_export_macro`, wit-bindgen keeps the exports out of this library's own type
/// section and emits them from the export macro, so a plugin's component exports only the
/// world it asked for.
pub mod bindings {
    /// `types`, `host` and the `plugin` export (`configure`).
    pub mod base {
        wit_bindgen::generate!({
            path: ["../../wit", "wit"],
            world: "weir:sdk/base@0.2.0",
            pub_export_macro: true,
            export_macro_name: "export_base",
            default_bindings_module: "weir_plugin_sdk::bindings::base",
            generate_all,
            generate_unused_types: true,
            additional_derives: [PartialEq, Eq],
        });
    }

    /// The `allocator` export.
    pub mod allocator {
        wit_bindgen::generate!({
            path: ["../../wit", "wit"],
            world: "weir:sdk/allocator-hooks@0.2.0",
            pub_export_macro: true,
            export_macro_name: "export_allocator_hooks",
            default_bindings_module: "weir_plugin_sdk::bindings::allocator",
            with: {
                "weir:policy/types@0.2.0": crate::bindings::base::weir::policy::types,
                "weir:policy/address-pool@0.2.0": generate,
            },
        });
    }

    /// The `firewall` export.
    pub mod firewall {
        wit_bindgen::generate!({
            path: ["../../wit", "wit"],
            world: "weir:sdk/firewall-hooks@0.2.0",
            pub_export_macro: true,
            export_macro_name: "export_firewall_hooks",
            default_bindings_module: "weir_plugin_sdk::bindings::firewall",
            with: { "weir:policy/types@0.2.0": crate::bindings::base::weir::policy::types },
        });
    }

    /// The `router` export.
    pub mod router {
        wit_bindgen::generate!({
            path: ["../../wit", "wit"],
            world: "weir:sdk/router-hooks@0.2.0",
            pub_export_macro: true,
            export_macro_name: "export_router_hooks",
            default_bindings_module: "weir_plugin_sdk::bindings::router",
            with: {
                "weir:policy/types@0.2.0": crate::bindings::base::weir::policy::types,
                "weir:policy/peer-set@0.2.0": generate,
            },
        });
    }
}

/// Every type of `weir:policy/types` (requests, decisions, rules, …).
pub use bindings::base::weir::policy::types;

/// The host's interface (`log`); prefer the wrappers in [`log`].
pub use bindings::base::weir::policy::host;

/// `configure`: accept or refuse the operator's settings. Every plugin implements it.
pub use bindings::base::exports::weir::policy::plugin::Guest as Plugin;

/// The hooks of the `allocator-plugin` world: runner ids and workload addresses.
pub use bindings::allocator::exports::weir::policy::allocator::Guest as Allocator;

/// The hook of the `firewall-plugin` world: a workload's rules.
pub use bindings::firewall::exports::weir::policy::firewall::Guest as Firewall;

/// The hook of the `router-plugin` world: paths to peer runners and egress.
pub use bindings::router::exports::weir::policy::router::Guest as Router;

/// The address pool an `assign-address` call borrows (the host's, queried in place).
pub use bindings::allocator::weir::policy::address_pool::Pool;

/// The peer runners a `route` call borrows (the host's index, queried in place).
pub use bindings::router::weir::policy::peer_set::Peers;

/// Everything a plugin usually needs: `use weir_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::types::*;
    pub use crate::{
        Allocator, Cidr, ConfigCell, Firewall, FreePool, MemoryPeers, MemoryPool, PeerSet, Peers,
        Plugin, Pool, Router, addresses, check_keys, config_get, format_ipv4, has_labels,
        highest_free, ip, label, log, lowest_free, num, parse_cidr_list, parse_ipv4,
    };
}

#[doc(hidden)]
pub mod __private {
    /// Called at the start of every exported function: installs (once) a panic hook that
    /// reports the panic through the host's `log` before the instance traps.
    #[inline]
    pub fn enter() {
        #[cfg(target_arch = "wasm32")]
        {
            static HOOK: std::sync::Once = std::sync::Once::new();
            HOOK.call_once(|| std::panic::set_hook(Box::new(report_panic)));
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string panic payload)");
        match info.location() {
            Some(at) => crate::log::error(format!(
                "plugin panicked at {}:{}:{}: {message}",
                at.file(),
                at.line(),
                at.column()
            )),
            None => crate::log::error(format!("plugin panicked: {message}")),
        }
    }
}

/// Shared by the export macros: the wrapper's `Plugin` impl.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($wrapper:ident, $ty:ident) => {
        impl $crate::Plugin for $wrapper {
            fn configure(
                config: $crate::types::Config,
            ) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__private::enter();
                <$ty as $crate::Plugin>::configure(config)
            }
        }
        $crate::bindings::base::export_base!($wrapper with_types_in $crate::bindings::base);
    };
}

/// Export a type implementing [`Plugin`] and [`Allocator`] as an `allocator-plugin` component.
///
/// Use it once per crate, with the type's name (not a path): `export_allocator!(MyPlugin);`.
#[macro_export]
macro_rules! export_allocator {
    ($ty:ident) => {
        const _: () = {
            struct __WeirExport;
            $crate::__export_plugin!(__WeirExport, $ty);
            impl $crate::Allocator for __WeirExport {
                fn assign_runner(
                    request: $crate::types::RunnerRequest,
                ) -> $crate::types::RunnerDecision {
                    $crate::__private::enter();
                    <$ty as $crate::Allocator>::assign_runner(request)
                }
                fn assign_address(
                    request: $crate::types::AddressRequest,
                    pool: &$crate::Pool,
                ) -> $crate::types::AddressDecision {
                    $crate::__private::enter();
                    <$ty as $crate::Allocator>::assign_address(request, pool)
                }
            }
            $crate::bindings::allocator::export_allocator_hooks!(
                __WeirExport with_types_in $crate::bindings::allocator
            );
        };
    };
}

/// Export a type implementing [`Plugin`] and [`Firewall`] as a `firewall-plugin` component.
///
/// Use it once per crate, with the type's name (not a path): `export_firewall!(MyPlugin);`.
#[macro_export]
macro_rules! export_firewall {
    ($ty:ident) => {
        const _: () = {
            struct __WeirExport;
            $crate::__export_plugin!(__WeirExport, $ty);
            impl $crate::Firewall for __WeirExport {
                fn rules(
                    request: $crate::types::FirewallRequest,
                ) -> $crate::types::FirewallDecision {
                    $crate::__private::enter();
                    <$ty as $crate::Firewall>::rules(request)
                }
            }
            $crate::bindings::firewall::export_firewall_hooks!(
                __WeirExport with_types_in $crate::bindings::firewall
            );
        };
    };
}

/// Export a type implementing [`Plugin`] and [`Router`] as a `router-plugin` component.
///
/// Use it once per crate, with the type's name (not a path): `export_router!(MyPlugin);`.
#[macro_export]
macro_rules! export_router {
    ($ty:ident) => {
        const _: () = {
            struct __WeirExport;
            $crate::__export_plugin!(__WeirExport, $ty);
            impl $crate::Router for __WeirExport {
                fn route(
                    request: $crate::types::RouteRequest,
                    peers: &$crate::Peers,
                ) -> $crate::types::RouteDelta {
                    $crate::__private::enter();
                    <$ty as $crate::Router>::route(request, peers)
                }
            }
            $crate::bindings::router::export_router_hooks!(
                __WeirExport with_types_in $crate::bindings::router
            );
        };
    };
}

/// The example in `plugins/README.md` must compile.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;

#[cfg(test)]
mod tests {
    /// `wit/sdk.wit` re-slices the policy worlds; this fails if `wit/policy.wit` grows a world
    /// import or export that the SDK's worlds (and export macros) do not cover.
    #[test]
    fn sdk_worlds_cover_the_policy_worlds() {
        let wit = include_str!("../../../wit/policy.wit");
        for hook in ["allocator", "firewall", "router"] {
            let head = format!("world {hook}-plugin {{");
            let start = wit
                .find(&head)
                .unwrap_or_else(|| panic!("no {head} in policy.wit"))
                + head.len();
            let body: Vec<&str> = wit[start..]
                .split('}')
                .next()
                .unwrap()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("//"))
                .collect();
            assert_eq!(
                body,
                ["import host;", "export plugin;", &format!("export {hook};")],
                "world {hook}-plugin changed: update sdk/wit/sdk.wit and the export macros"
            );
        }
    }
}
