//! Process-wide logging with `tracing`: human-readable by default, JSON lines on request.

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter: `WEIR_LOG` if set, else `RUST_LOG`, else `info`.
pub fn filter() -> EnvFilter {
    let spec = std::env::var("WEIR_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {spec:?}: {e}");
        EnvFilter::new("info")
    })
}

/// Install the global subscriber. Safe to call once per process; later calls are ignored.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
