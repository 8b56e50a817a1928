//! WebAssembly plugins: wasmtime components of the `weir:policy` worlds, run with no ambient
//! capability, a wall-clock deadline (epoch interruption) and a memory cap.
//!
//! One [`Engine`] per process, with a thread that advances its epoch every millisecond.
//! Components are compiled once and cached (precompiled, keyed by the content hash and the
//! engine's compatibility hash). Calls reuse warm instances; an instance that trapped is thrown
//! away (it cannot be entered again), the next call gets a fresh one from the `InstancePre`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, Trap,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{Fault, Limits};
use crate::decision::{self as t, Decision, Hook, PeersView, PoolView, Request};

mod allocator_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "allocator-plugin",
        imports: { default: trappable },
        with: { "weir:policy/address-pool.pool": crate::decision::PoolView },
    });
}
mod firewall_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "firewall-plugin",
        imports: { default: trappable },
    });
}
mod router_world {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router-plugin",
        imports: { default: trappable },
        with: { "weir:policy/peer-set.peers": crate::decision::PeersView },
    });
}

/// The `weir:policy` package version this host implements.
pub const PACKAGE_VERSION: &str = crate::decision::INTERFACE_VERSION;

/// Plugin instances alive at once, all plugins together: at most 4 warm ones per plugin and
/// hook, plus the fresh ones being made (decisions that change state are serialised by the hub).
const POOL_INSTANCES: u32 = 128;

/// One epoch tick.
const TICK: Duration = Duration::from_millis(1);
/// How much of a guest's stderr is kept (enough for a panic message).
const STDERR_CAPACITY: usize = 4096;

/// The process's engine (epoch interruption on, a ticker thread started on first use).
///
/// Instances come from wasmtime's pooling allocator: a slot's memory and tables stay mapped
/// and resident when an instance goes (up to 2 MiB / 64 KiB), and only the pages it dirtied are
/// reset (the PAGEMAP_SCAN ioctl on Linux ≥ 6.7, a bounded memset before). So a fresh
/// instance — after a trap, or a reload's first decision — costs no mmap, munmap or page
/// fault: about 4 µs instead of 11, and its first call runs as fast as a warm one
/// (docs/benchmarks.md, "Policy decisions"). Each slot reserves 4 GiB of address space (no
/// memory); the memory cap stays per plugin ([`Limits::memory`], enforced by `StoreLimits`).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true).epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            // No per-component caps: a componentize-py plugin has many core instances.
            .total_core_instances(8 * POOL_INSTANCES)
            .total_tables(4 * POOL_INSTANCES)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto)
            // Calls are synchronous: no fiber stacks.
            .total_stacks(0);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // The configuration above is always valid; a failure here is a build problem.
        let engine = Engine::new(&cfg).unwrap_or_else(|e| panic!("wasmtime engine: {e}"));
        let ticker = engine.weak();
        let _ = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while let Some(e) = ticker.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(TICK);
                }
            });
        engine
    })
}

/// The worlds a component implements, found in its exports: the hooks of this host's
/// interface version, the `weir:policy` versions it exports (any), its exports and imports.
pub fn worlds_of(component: &Component) -> Worlds {
    let engine = engine();
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let has = |i: &str| {
        exports
            .iter()
            .any(|e| e == &format!("weir:policy/{i}@{PACKAGE_VERSION}"))
    };
    let mut hooks = Vec::new();
    if has("plugin") {
        for (name, hook) in [
            ("allocator", Hook::Allocator),
            ("firewall", Hook::Firewall),
            ("router", Hook::Router),
        ] {
            if has(name) {
                hooks.push(hook);
            }
        }
    }
    let mut versions: Vec<String> = exports
        .iter()
        .filter_map(|e| e.strip_prefix("weir:policy/"))
        .filter_map(|e| e.split_once('@').map(|(_, v)| v.to_string()))
        .collect();
    versions.sort();
    versions.dedup();
    Worlds {
        hooks,
        versions,
        exports,
        imports,
    }
}

/// What [`worlds_of`] found.
pub struct Worlds {
    pub hooks: Vec<Hook>,
    /// Every `weir:policy` version the component exports interfaces of.
    pub versions: Vec<String>,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

/// Why a file could not become a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a WebAssembly component ({reason}); build plugins for wasm32-wasip2")]
    NotComponent { path: PathBuf, reason: String },
    #[error(
        "{path} implements no weir:policy world (it exports: {exports}); implement allocator-plugin, firewall-plugin or router-plugin"
    )]
    UnknownWorld { path: PathBuf, exports: String },
    #[error(
        "{path} implements weir:policy@{found}, but this host needs weir:policy@{needs}: rebuild it against wit/policy.wit {needs} (Rust: weir-plugin-sdk {needs}; see docs/plugins.md, \"Interface versions\")"
    )]
    OtherVersion {
        path: PathBuf,
        found: String,
        needs: &'static str,
    },
    #[error("{path} does not implement the {hook} world (it implements: {found})")]
    WrongWorld {
        path: PathBuf,
        hook: Hook,
        found: String,
    },
    #[error("{path}: cannot link: {reason}")]
    Link { path: PathBuf, reason: String },
    #[error("configure refused the settings: {0}")]
    Configure(String),
    #[error("configure failed: {0}")]
    ConfigureFault(String),
}

/// A compiled component, its hash and load time.
pub struct Compiled {
    pub component: Component,
    /// The first 12 hex digits of the file's SHA-256.
    pub version: String,
    pub hooks: Vec<Hook>,
    /// The `weir:policy` versions it exports (this host's, when it loads).
    pub versions: Vec<String>,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub compile_time: Duration,
    pub cached: bool,
}

/// Read and compile `path` (through the cache in `cache_dir`, if any).
pub fn compile(path: &Path, cache_dir: Option<&Path>) -> Result<Compiled, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let digest = hex(&Sha256::digest(&bytes));
    let engine = engine();
    let started = Instant::now();
    let cache_file = cache_dir.map(|d| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        d.join(format!("{digest}-{:016x}.cwasm", h.finish()))
    });
    let mut cached = false;
    let component = match cache_file.as_ref().filter(|f| f.is_file()) {
        // SAFETY: the file was written by `precompile_component` of a compatible engine (the
        // name carries the compatibility hash) into Weir's own state directory.
        Some(f) => match unsafe { Component::deserialize_file(engine, f) } {
            Ok(c) => {
                cached = true;
                c
            }
            Err(_) => compile_fresh(engine, path, &bytes, cache_file.as_deref())?,
        },
        None => compile_fresh(engine, path, &bytes, cache_file.as_deref())?,
    };
    let Worlds {
        hooks,
        versions,
        exports,
        imports,
    } = worlds_of(&component);
    if hooks.is_empty() {
        if let Some(found) = versions.iter().find(|v| v.as_str() != PACKAGE_VERSION) {
            return Err(LoadError::OtherVersion {
                path: path.to_path_buf(),
                found: found.clone(),
                needs: PACKAGE_VERSION,
            });
        }
        return Err(LoadError::UnknownWorld {
            path: path.to_path_buf(),
            exports: if exports.is_empty() {
                "nothing".into()
            } else {
                exports.join(", ")
            },
        });
    }
    Ok(Compiled {
        component,
        version: digest[..12].to_string(),
        hooks,
        versions,
        exports,
        imports,
        compile_time: started.elapsed(),
        cached,
    })
}

fn compile_fresh(
    engine: &Engine,
    path: &Path,
    bytes: &[u8],
    cache: Option<&Path>,
) -> Result<Component, LoadError> {
    let not_component = |e: wasmtime::Error| LoadError::NotComponent {
        path: path.to_path_buf(),
        reason: first_line(&e.to_string()),
    };
    if !wasmparser_is_component(bytes) {
        return Err(LoadError::NotComponent {
            path: path.to_path_buf(),
            reason: if bytes.starts_with(b"\0asm") {
                "a core module, not a component".into()
            } else {
                "not WebAssembly".into()
            },
        });
    }
    let precompiled = engine.precompile_component(bytes).map_err(not_component)?;
    if let Some(cache) = cache
        && let Some(dir) = cache.parent()
    {
        // A cache that cannot be written only costs a recompilation next time.
        let _ = std::fs::create_dir_all(dir).and_then(|()| {
            let tmp = cache.with_extension("tmp");
            std::fs::write(&tmp, &precompiled).and_then(|()| std::fs::rename(&tmp, cache))
        });
    }
    // SAFETY: produced just above by this engine.
    unsafe { Component::deserialize(engine, &precompiled) }.map_err(not_component)
}

/// A component's preamble: `\0asm`, then the layer field (1 = component) after the version.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[6] == 1 && bytes[7] == 0
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-instance state: an empty WASI context (no files, env, network, clock or randomness)
/// and the memory limiter.
struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    name: Arc<str>,
    /// The guest's stderr (a panic message lands here), kept in memory, bounded.
    stderr: MemoryOutputPipe,
    /// The last error the guest logged (an SDK panic hook reports the panic this way).
    last_error: Option<String>,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock stuck at zero and randomness that is all zeros: decisions are pure functions of
/// their input, so a plugin gains nothing from either.
struct ZeroClock;
impl wasmtime_wasi::HostWallClock for ZeroClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}
impl wasmtime_wasi::HostMonotonicClock for ZeroClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
struct ZeroRng;
impl rand_core::TryRng for ZeroRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(0)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(0)
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.fill(0);
        Ok(())
    }
}

fn empty_wasi(stderr: MemoryOutputPipe) -> WasiCtx {
    WasiCtxBuilder::new()
        .stderr(stderr)
        .wall_clock(ZeroClock)
        .monotonic_clock(ZeroClock)
        .secure_random(ZeroRng)
        .insecure_random(ZeroRng)
        .insecure_random_seed(0)
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false)
        .build()
}

macro_rules! impl_host_log {
    ($world:ident) => {
        impl $world::weir::policy::types::Host for PluginState {}
        impl $world::weir::policy::host::Host for PluginState {
            fn log(
                &mut self,
                level: $world::weir::policy::host::Level,
                message: String,
            ) -> wasmtime::Result<()> {
                use $world::weir::policy::host::Level;
                // A plugin must not flood the log: one line, bounded.
                let mut m: String = message.chars().filter(|c| !c.is_control()).take(512).collect();
                if message.len() > m.len() {
                    m.push('…');
                }
                match level {
                    Level::Debug => tracing::debug!(plugin = %self.name, "{m}"),
                    Level::Info => tracing::info!(plugin = %self.name, "{m}"),
                    Level::Warn => tracing::warn!(plugin = %self.name, "{m}"),
                    Level::Error => {
                        tracing::error!(plugin = %self.name, "{m}");
                        self.last_error = Some(m);
                    }
                }
                Ok(())
            }
        }
    };
}
impl_host_log!(allocator_world);
impl_host_log!(firewall_world);
impl_host_log!(router_world);

/// The most a `free-ranges` or a peer listing answers at once (the guest pages on).
const MAX_PAGE: u32 = 1024;

/// The pool of an `assign-address` call: every method reads the host's ranges in place.
mod pool_host {
    use wasmtime::component::Resource;

    use super::PluginState;
    use super::allocator_world::weir::policy::address_pool::{Host, HostPool, Ipv4Range};
    use crate::decision::PoolView;

    impl Host for PluginState {}
    impl HostPool for PluginState {
        fn free_count(&mut self, p: Resource<PoolView>) -> wasmtime::Result<u32> {
            let v = self.table.get(&p)?;
            Ok(u32::try_from(v.free().count()).unwrap_or(u32::MAX))
        }
        fn is_free(&mut self, p: Resource<PoolView>, a: u32) -> wasmtime::Result<bool> {
            Ok(self.table.get(&p)?.free().contains(a))
        }
        fn next_free(&mut self, p: Resource<PoolView>, from: u32) -> wasmtime::Result<Option<u32>> {
            Ok(self.table.get(&p)?.free().next_free(from))
        }
        fn prev_free(&mut self, p: Resource<PoolView>, from: u32) -> wasmtime::Result<Option<u32>> {
            Ok(self.table.get(&p)?.free().prev_free(from))
        }
        fn free_ranges(
            &mut self,
            p: Resource<PoolView>,
            from: u32,
            max: u32,
        ) -> wasmtime::Result<Vec<Ipv4Range>> {
            let max = max.min(super::MAX_PAGE) as usize;
            Ok(self
                .table
                .get(&p)?
                .free()
                .ranges_from(from, max)
                .into_iter()
                .map(|(first, last)| Ipv4Range { first, last })
                .collect())
        }
        fn generation(&mut self, p: Resource<PoolView>) -> wasmtime::Result<u64> {
            Ok(self.table.get(&p)?.generation())
        }
        fn drop(&mut self, p: Resource<PoolView>) -> wasmtime::Result<()> {
            self.table.delete(p)?;
            Ok(())
        }
    }
}

/// The peers of a `route` call, read in place from the host's index.
mod peers_host {
    use wasmtime::component::Resource;

    use super::PluginState;
    use super::router_world::weir::policy::peer_set::{Host, HostPeers};
    use super::router_world::weir::policy::types::RunnerInfo;
    use crate::decision::PeersView;

    impl Host for PluginState {}
    impl HostPeers for PluginState {
        fn count(&mut self, p: Resource<PeersView>) -> wasmtime::Result<u32> {
            Ok(u32::try_from(self.table.get(&p)?.count()).unwrap_or(u32::MAX))
        }
        fn get(
            &mut self,
            p: Resource<PeersView>,
            name: String,
        ) -> wasmtime::Result<Option<RunnerInfo>> {
            Ok(self.table.get(&p)?.get(&name).map(super::rt::runner))
        }
        fn with_label(
            &mut self,
            p: Resource<PeersView>,
            key: String,
            value: String,
        ) -> wasmtime::Result<Vec<RunnerInfo>> {
            Ok(self
                .table
                .get(&p)?
                .with_label(&key, &value)
                .map(super::rt::runner)
                .collect())
        }
        fn names_with_label(
            &mut self,
            p: Resource<PeersView>,
            key: String,
            value: String,
        ) -> wasmtime::Result<Vec<String>> {
            Ok(self
                .table
                .get(&p)?
                .names_with_label(&key, &value)
                .map(str::to_string)
                .collect())
        }
        fn page(
            &mut self,
            p: Resource<PeersView>,
            after: String,
            max: u32,
        ) -> wasmtime::Result<Vec<RunnerInfo>> {
            let max = max.min(super::MAX_PAGE) as usize;
            Ok(self
                .table
                .get(&p)?
                .page(&after, max)
                .map(super::rt::runner)
                .collect())
        }
        fn drop(&mut self, p: Resource<PeersView>) -> wasmtime::Result<()> {
            self.table.delete(p)?;
            Ok(())
        }
    }
}

enum Pre {
    Allocator(allocator_world::AllocatorPluginPre<PluginState>),
    Firewall(firewall_world::FirewallPluginPre<PluginState>),
    Router(router_world::RouterPluginPre<PluginState>),
}

enum Bindings {
    Allocator(allocator_world::AllocatorPlugin),
    Firewall(firewall_world::FirewallPlugin),
    Router(router_world::RouterPlugin),
}

struct Warm {
    store: Store<PluginState>,
    bindings: Bindings,
}

/// Where a decision on a fresh instance spends its time ([`WasmPlugin::time_fresh`]).
#[derive(Debug, Clone, Copy)]
pub struct FreshTiming {
    pub instantiate: Duration,
    pub configure: Duration,
    pub decide: Duration,
}

/// A loaded, configured plugin of one world.
pub struct WasmPlugin {
    pub name: Arc<str>,
    pub hook: Hook,
    pub version: String,
    limits: Limits,
    config: Vec<(String, String)>,
    pre: Pre,
    warm: Mutex<Vec<Warm>>,
}

impl WasmPlugin {
    /// Link `compiled` for `hook`, instantiate once and `configure` it (a refusal fails the load).
    pub fn new(
        name: &str,
        path: &Path,
        compiled: &Compiled,
        hook: Hook,
        limits: Limits,
        config: Vec<(String, String)>,
    ) -> Result<Self, LoadError> {
        if !compiled.hooks.contains(&hook) {
            return Err(LoadError::WrongWorld {
                path: path.to_path_buf(),
                hook,
                found: compiled
                    .hooks
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let link_err = |e: wasmtime::Error| LoadError::Link {
            path: path.to_path_buf(),
            reason: first_line(&e.to_string()),
        };
        let engine = engine();
        let mut linker: Linker<PluginState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_err)?;
        let pre = match hook {
            Hook::Allocator => {
                allocator_world::AllocatorPlugin::add_to_linker::<_, HasSelf<_>>(
                    &mut linker,
                    |s| s,
                )
                .map_err(link_err)?;
                let ip = linker
                    .instantiate_pre(&compiled.component)
                    .map_err(link_err)?;
                Pre::Allocator(allocator_world::AllocatorPluginPre::new(ip).map_err(link_err)?)
            }
            Hook::Firewall => {
                firewall_world::FirewallPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                    .map_err(link_err)?;
                let ip = linker
                    .instantiate_pre(&compiled.component)
                    .map_err(link_err)?;
                Pre::Firewall(firewall_world::FirewallPluginPre::new(ip).map_err(link_err)?)
            }
            Hook::Router => {
                router_world::RouterPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
                    .map_err(link_err)?;
                let ip = linker
                    .instantiate_pre(&compiled.component)
                    .map_err(link_err)?;
                Pre::Router(router_world::RouterPluginPre::new(ip).map_err(link_err)?)
            }
        };
        let plugin = Self {
            name: name.into(),
            hook,
            version: compiled.version.clone(),
            limits,
            config,
            pre,
            warm: Mutex::new(Vec::new()),
        };
        // Configure once now: a refusal or a fault fails the load, not a later decision.
        let warm = plugin.instantiate().map_err(|f| match f {
            Fault::Config(m) => LoadError::Configure(m),
            other => LoadError::ConfigureFault(other.to_string()),
        })?;
        plugin.park(warm);
        Ok(plugin)
    }

    fn new_store(&self) -> Store<PluginState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory)
            .instances(16)
            .tables(16)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let mut store = Store::new(
            engine(),
            PluginState {
                wasi: empty_wasi(stderr.clone()),
                table: ResourceTable::new(),
                limits,
                name: self.name.clone(),
                stderr,
                last_error: None,
            },
        );
        store.limiter(|s| &mut s.limits);
        store
    }

    /// A fresh, configured instance.
    fn instantiate(&self) -> Result<Warm, Fault> {
        let mut warm = self.instantiate_bare()?;
        self.configure(&mut warm)?;
        Ok(warm)
    }

    /// A fresh instance, not configured yet.
    fn instantiate_bare(&self) -> Result<Warm, Fault> {
        let mut store = self.new_store();
        store.set_epoch_deadline(ticks(self.limits.deadline));
        let fault = |e: wasmtime::Error| classify(&e, self.limits);
        let bindings = match &self.pre {
            Pre::Allocator(p) => Bindings::Allocator(p.instantiate(&mut store).map_err(fault)?),
            Pre::Firewall(p) => Bindings::Firewall(p.instantiate(&mut store).map_err(fault)?),
            Pre::Router(p) => Bindings::Router(p.instantiate(&mut store).map_err(fault)?),
        };
        Ok(Warm { store, bindings })
    }

    /// Hand the plugin its settings (a refusal is [`Fault::Config`]).
    fn configure(&self, warm: &mut Warm) -> Result<(), Fault> {
        let cfg = &self.config;
        let store = &mut warm.store;
        let answer = match &warm.bindings {
            Bindings::Allocator(b) => b.weir_policy_plugin().call_configure(store, cfg),
            Bindings::Firewall(b) => b.weir_policy_plugin().call_configure(store, cfg),
            Bindings::Router(b) => b.weir_policy_plugin().call_configure(store, cfg),
        };
        answer
            .map_err(|e| classify(&e, self.limits))?
            .map_err(Fault::Config)
    }

    /// One decision on a fresh instance, each phase timed (benchmarks): the instance made,
    /// `configure` called, the decision taken.
    pub fn time_fresh(&self, request: &Request) -> Result<FreshTiming, Fault> {
        let t = Instant::now();
        let mut warm = self.instantiate_bare()?;
        let instantiate = t.elapsed();
        let t = Instant::now();
        self.configure(&mut warm)?;
        let configure = t.elapsed();
        let t = Instant::now();
        warm.store.set_epoch_deadline(ticks(self.limits.deadline));
        invoke(&mut warm, request).map_err(|e| classify(&e, self.limits))??;
        Ok(FreshTiming {
            instantiate,
            configure,
            decide: t.elapsed(),
        })
    }

    /// Drop the warm instances: the next call instantiates afresh (benchmarks).
    pub fn drain_warm(&self) {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn park(&self, warm: Warm) {
        let mut pool = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        // Keep a few warm instances for concurrent callers; more would only hold memory.
        if pool.len() < 4 {
            pool.push(warm);
        }
    }

    /// One decision. Blocking: callers on an async runtime run it on a blocking thread.
    pub fn call(&self, request: &Request) -> Result<Decision, Fault> {
        let popped = self.warm.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut warm = match popped {
            Some(w) => w,
            None => self.instantiate()?,
        };
        warm.store.set_epoch_deadline(ticks(self.limits.deadline));
        let result = invoke(&mut warm, request)
            .map_err(|e| with_stderr(classify(&e, self.limits), &warm.store));
        match result {
            Ok(Ok(decision)) => {
                self.park(warm);
                Ok(decision)
            }
            // A wrong answer is not a trap: the instance is still sound.
            Ok(Err(fault)) => {
                self.park(warm);
                Err(fault)
            }
            // A trapped instance cannot be entered again: drop it with its store.
            Err(fault) => Err(fault),
        }
    }
}

fn ticks(deadline: Duration) -> u64 {
    (deadline.as_millis() as u64 / TICK.as_millis() as u64).max(1)
}

/// Add what the guest wrote to stderr (its panic message) to a trap.
fn with_stderr(fault: Fault, store: &Store<PluginState>) -> Fault {
    match fault {
        Fault::Trap(t) => {
            if let Some(logged) = &store.data().last_error {
                return Fault::Trap(format!("{t}: {logged}"));
            }
            let bytes = store.data().stderr.contents();
            let text = String::from_utf8_lossy(&bytes);
            let said = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("note:"))
                .collect::<Vec<_>>()
                .join(" ");
            if said.is_empty() {
                Fault::Trap(t)
            } else {
                let said: String = said.chars().take(300).collect();
                Fault::Trap(format!("{t}: {said}"))
            }
        }
        other => other,
    }
}

/// Name the cause of a failed call.
fn classify(e: &wasmtime::Error, limits: Limits) -> Fault {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Deadline(limits.deadline),
        Some(Trap::StackOverflow) => Fault::Trap("call stack exhausted".into()),
        Some(t) => {
            let text = format!("{e:?}");
            if text.contains("forcing trap when growing memory")
                || text.contains("memory") && text.contains("grow")
            {
                Fault::Memory(limits.memory)
            } else {
                Fault::Trap(t.to_string())
            }
        }
        None => {
            let text = format!("{e:?}");
            if text.contains("forcing trap when growing memory")
                || text.contains("memory minimum size")
            {
                Fault::Memory(limits.memory)
            } else if text.contains("concurrent") && text.contains("limit") {
                Fault::Trap(format!(
                    "no free plugin instance slot ({POOL_INSTANCES} in use across every plugin)"
                ))
            } else {
                Fault::Trap(first_line(&e.to_string()))
            }
        }
    }
}

fn invoke(w: &mut Warm, req: &Request) -> wasmtime::Result<Result<Decision, Fault>> {
    let store = &mut w.store;
    Ok(match (&w.bindings, req) {
        (Bindings::Allocator(b), Request::AssignRunner(r)) => {
            let out = b
                .weir_policy_allocator()
                .call_assign_runner(&mut *store, &alloc::runner_request(r))?;
            Ok(Decision::Runner(alloc::runner_decision(out)))
        }
        (Bindings::Allocator(b), Request::AssignAddress(r)) => {
            // The pool goes in as a borrowed handle to the host's own ranges (an Arc clone).
            let pool = store.data_mut().table.push(r.pool.clone())?;
            let handle = Resource::<PoolView>::new_borrow(pool.rep());
            let out = b.weir_policy_allocator().call_assign_address(
                &mut *store,
                &alloc::address_request(r),
                handle,
            );
            store.data_mut().table.delete(pool)?;
            Ok(Decision::Address(alloc::address_decision(out?)))
        }
        (Bindings::Firewall(b), Request::Rules(r)) => {
            let out = b
                .weir_policy_firewall()
                .call_rules(&mut *store, &fw::request(r))?;
            fw::decision(out).map(Decision::Firewall)
        }
        (Bindings::Router(b), Request::Route(r)) => {
            let peers = store.data_mut().table.push(r.peers.clone())?;
            let handle = Resource::<PeersView>::new_borrow(peers.rep());
            let out = b
                .weir_policy_router()
                .call_route(&mut *store, &rt::request(r), handle);
            store.data_mut().table.delete(peers)?;
            Ok(Decision::Route(rt::delta(out?)))
        }
        (_, other) => Err(Fault::Output(format!(
            "this plugin does not implement {}",
            other.call_name()
        ))),
    })
}

fn labels_out(l: &t::Labels) -> Vec<(String, String)> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn labels_in(l: Vec<(String, String)>) -> t::Labels {
    l.into_iter().collect()
}

/// A workload's origin, for any world (the three share the type's shape, not its Rust type).
macro_rules! origin_out {
    ($w:ident, $o:expr) => {
        $w::Origin {
            engine: match $o.engine {
                t::Engine::Scheduler => $w::Engine::Scheduler,
                t::Engine::Cni => $w::Engine::Cni,
                t::Engine::Docker => $w::Engine::Docker,
                t::Engine::Netavark => $w::Engine::Netavark,
                t::Engine::Kohakuriver => $w::Engine::Kohakuriver,
            },
            name: $o.name.clone(),
        }
    };
}

/// Conversions for the allocator world.
mod alloc {
    use std::net::Ipv4Addr;

    use super::allocator_world::weir::policy::types as w;
    use super::{labels_out, t};

    pub fn runner_request(r: &t::RunnerRequest) -> w::RunnerRequest {
        w::RunnerRequest {
            network: r.network.clone(),
            name: r.name.clone(),
            physical_ip: u32::from(r.physical_ip),
            labels: labels_out(&r.labels),
            taken: r
                .taken
                .iter()
                .map(|x| w::TakenId {
                    id: x.id,
                    runner: x.runner.clone(),
                    physical_ip: u32::from(x.physical_ip),
                    last_seen_ms: x.last_seen_ms,
                    active: x.active,
                })
                .collect(),
            plan: w::Plan {
                spec: r.plan.spec.clone(),
                overlay: w::Cidr {
                    address: u32::from(r.plan.overlay.network()),
                    prefix: r.plan.overlay.prefix_len(),
                },
                max_runners: r.plan.max_runners,
            },
        }
    }

    pub fn runner_decision(d: w::RunnerDecision) -> t::RunnerDecision {
        match d {
            w::RunnerDecision::Id(i) => t::RunnerDecision::Id(i),
            w::RunnerDecision::Builtin => t::RunnerDecision::Builtin,
            w::RunnerDecision::Deny(m) => t::RunnerDecision::Deny(m),
        }
    }

    pub fn address_request(r: &t::AddressRequest) -> w::AddressRequest {
        w::AddressRequest {
            network: r.network.clone(),
            workload_id: r.workload_id.clone(),
            kind: if r.vm {
                w::WorkloadKind::Vm
            } else {
                w::WorkloadKind::Container
            },
            origin: origin_out!(w, r.origin),
            labels: labels_out(&r.labels),
            runner: r.runner.clone(),
            runner_labels: labels_out(&r.runner_labels),
            subnet: w::Cidr {
                address: u32::from(r.subnet.network()),
                prefix: r.subnet.prefix_len(),
            },
            gateway: u32::from(r.gateway),
            first: u32::from(r.first),
            last: u32::from(r.last),
        }
    }

    pub fn address_decision(d: w::AddressDecision) -> t::AddressDecision {
        match d {
            w::AddressDecision::Address(a) => t::AddressDecision::Address(Ipv4Addr::from(a)),
            w::AddressDecision::NextFree => t::AddressDecision::NextFree,
            w::AddressDecision::Deny(m) => t::AddressDecision::Deny(m),
        }
    }
}

/// Conversions for the firewall world.
mod fw {
    use std::net::Ipv4Addr;

    use super::firewall_world::weir::policy::types as w;
    use super::{Fault, labels_in, labels_out, t};

    pub fn request(r: &t::FirewallRequest) -> w::FirewallRequest {
        w::FirewallRequest {
            network: r.network.clone(),
            workload_id: r.workload_id.clone(),
            origin: origin_out!(w, r.origin),
            labels: labels_out(&r.labels),
            runner: r.runner.clone(),
            address: u32::from(r.address),
            groups: r.groups.iter().map(labels_out).collect(),
        }
    }

    fn verdict(v: w::Verdict) -> t::Verdict {
        match v {
            w::Verdict::Allow => t::Verdict::Allow,
            w::Verdict::Deny => t::Verdict::Deny,
        }
    }

    pub fn decision(d: w::FirewallDecision) -> Result<t::FirewallDecision, Fault> {
        let rules = d
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(t::Rule {
                    direction: match r.direction {
                        w::Direction::Ingress => t::Direction::Ingress,
                        w::Direction::Egress => t::Direction::Egress,
                    },
                    peer: match r.peer {
                        w::Peer::Labels(l) => t::Peer::Labels(labels_in(l)),
                        w::Peer::Cidr(c) => {
                            let net = ipnet::Ipv4Net::new(Ipv4Addr::from(c.address), c.prefix)
                                .map_err(|_| {
                                    Fault::Output(format!(
                                        "rule {i}: CIDR prefix {} is above 32",
                                        c.prefix
                                    ))
                                })?;
                            t::Peer::Cidr(net.trunc().to_string())
                        }
                        w::Peer::Host => t::Peer::Host,
                        w::Peer::Wan => t::Peer::Wan,
                        w::Peer::Any => t::Peer::Any,
                    },
                    protocol: match r.protocol {
                        w::Protocol::Any => t::Protocol::Any,
                        w::Protocol::Tcp => t::Protocol::Tcp,
                        w::Protocol::Udp => t::Protocol::Udp,
                        w::Protocol::Icmp => t::Protocol::Icmp,
                    },
                    ports: r
                        .ports
                        .into_iter()
                        .map(|p| t::PortRange {
                            first: p.first,
                            last: p.last,
                        })
                        .collect(),
                    verdict: verdict(r.verdict),
                })
            })
            .collect::<Result<_, Fault>>()?;
        Ok(t::FirewallDecision {
            rules,
            default_verdict: verdict(d.default_verdict),
        })
    }
}

/// Conversions for the router world.
pub(super) mod rt {
    use super::router_world::weir::policy::types as w;
    use super::{labels_out, t};

    pub fn runner(r: &t::RunnerInfo) -> w::RunnerInfo {
        w::RunnerInfo {
            name: r.name.clone(),
            id: r.id,
            labels: labels_out(&r.labels),
            physical_ip: u32::from(r.physical_ip),
        }
    }

    pub fn request(r: &t::RouteRequest) -> w::RouteRequest {
        w::RouteRequest {
            network: r.network.clone(),
            runner: runner(&r.runner),
            change: match &r.change {
                t::RouteChange::Joined => w::RouteChange::Joined,
                t::RouteChange::Peer(p) => w::RouteChange::Peer(runner(p)),
            },
        }
    }

    pub fn delta(d: w::RouteDelta) -> t::RouteDelta {
        t::RouteDelta {
            paths: d
                .paths
                .into_iter()
                .map(|(n, p)| {
                    (
                        n,
                        match p {
                            w::Path::ViaHub => t::PathKind::ViaHub,
                            w::Path::Direct => t::PathKind::Direct,
                        },
                    )
                })
                .collect(),
            egress: d.egress.map(|e| match e {
                w::Egress::RunnerNat => t::Egress::RunnerNat,
                w::Egress::ViaHost => t::Egress::ViaHost,
            }),
        }
    }
}
