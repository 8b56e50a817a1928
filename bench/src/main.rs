//! `weir-bench`: Weir beside the reference tools, on one machine, in one run.
//!
//! ```text
//! weir-bench [--quick] [--out FILE] [SECTION...]    sections: attach policy datapath scale hub store memory concurrency engines
//! ```
//!
//! Each section builds what it measures in network namespaces of its own (`weir-bench-…`),
//! prints its tables and tears everything down, even when it fails. The tables are written into
//! `docs/benchmarks.md` (or `--out FILE`), each section in its own block.

mod attach;
mod concurrency;
mod datapath;
mod engines;
mod env;
mod grpc_plugin;
mod hub;
mod memory;
mod plugin_scale;
mod policy;
mod report;
mod scale;
mod sessions;
mod stats;
mod store;
mod table;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use env::Opts;
use report::{Report, RunInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Section {
    Attach,
    Policy,
    Datapath,
    Scale,
    Hub,
    Store,
    Memory,
    Concurrency,
    Engines,
}

impl Section {
    const ALL: [Section; 9] = [
        Section::Attach,
        Section::Policy,
        Section::Datapath,
        Section::Scale,
        Section::Hub,
        Section::Store,
        Section::Memory,
        Section::Concurrency,
        Section::Engines,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Attach => "attach",
            Section::Policy => "policy",
            Section::Datapath => "datapath",
            Section::Scale => "scale",
            Section::Hub => "hub",
            Section::Store => "store",
            Section::Memory => "memory",
            Section::Concurrency => "concurrency",
            Section::Engines => "engines",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::Attach => attach::TITLE,
            Section::Policy => policy::TITLE,
            Section::Datapath => datapath::TITLE,
            Section::Scale => scale::TITLE,
            Section::Hub => hub::TITLE,
            Section::Store => store::TITLE,
            Section::Memory => memory::TITLE,
            Section::Concurrency => concurrency::TITLE,
            Section::Engines => engines::TITLE,
        }
    }

    fn run(self, opts: Opts, run: &RunInfo) -> Pin<Box<dyn Future<Output = Result<Report>> + '_>> {
        match self {
            Section::Attach => Box::pin(attach::run(opts, run)),
            Section::Policy => Box::pin(policy::run(opts, run)),
            Section::Datapath => Box::pin(datapath::run(opts, run)),
            Section::Scale => Box::pin(scale::run(opts, run)),
            Section::Hub => Box::pin(hub::run(opts, run)),
            Section::Store => Box::pin(store::run(opts, run)),
            Section::Memory => Box::pin(memory::run(opts, run)),
            Section::Concurrency => Box::pin(concurrency::run(opts, run)),
            Section::Engines => Box::pin(engines::run(opts, run)),
        }
    }
}

/// Weir's benchmark suite. Run as root: it builds network namespaces.
#[derive(Debug, Parser)]
#[command(name = "weir-bench", version)]
struct Args {
    /// Shrink every N for a fast smoke run (the output says so).
    #[arg(long)]
    quick: bool,
    /// Where to write the results (default: docs/benchmarks.md of this repository).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Sections to run (default: all).
    #[arg(value_enum)]
    sections: Vec<Section>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix_is_root() {
        eprintln!("weir-bench: run as root (it builds network namespaces and runs the daemons)");
        return ExitCode::from(2);
    }
    let mut sections = if args.sections.is_empty() {
        Section::ALL.to_vec()
    } else {
        args.sections.clone()
    };
    sections.sort();
    sections.dedup();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| env::repo_root().join("docs/benchmarks.md"));
    let opts = Opts { quick: args.quick };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the running section's future: its labs and guards tear down on the way.
    let done = rt.block_on(async {
        tokio::select! {
            r = run_all(&sections, opts, &out) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match done {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => ExitCode::FAILURE,
        None => {
            eprintln!("weir-bench: interrupted; everything it built was removed");
            ExitCode::from(130)
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Run the sections one after another, printing each report and rewriting the doc after each
/// (so a later failure keeps the earlier results). Returns whether every section succeeded.
async fn run_all(sections: &[Section], opts: Opts, out: &std::path::Path) -> bool {
    let run = RunInfo::collect();
    let order: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
    println!("weir-bench on {}", run.summary());
    if opts.quick {
        println!("QUICK RUN: every N is shrunk; the figures are a smoke test, not results.");
    }
    let mut reports = Vec::new();
    let mut ok = true;
    for &s in sections {
        println!("\n== {} ==", s.name());
        let started = std::time::Instant::now();
        let report = match s.run(opts, &run).await {
            Ok(r) => r,
            Err(e) => {
                ok = false;
                let msg = format!("{e:#}");
                eprintln!("weir-bench: section {} failed: {msg}", s.name());
                Report::failed(s.name(), s.title(), opts, &run, &msg)
            }
        };
        println!("{}", report.markdown());
        println!(
            "({} took {:.1} s)",
            s.name(),
            started.elapsed().as_secs_f64()
        );
        reports.push(report);
        if let Err(e) = report::write_doc(out, &order, &run, &reports) {
            eprintln!("weir-bench: {e:#}");
            ok = false;
        }
    }
    println!("\nwrote {}", out.display());
    ok
}
