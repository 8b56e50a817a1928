//! The `weir` command line: argument parsing and one module per command family (`*_cmd`,
//! `daemon`); `conn` reaches the host and `render` shows its answers for the client commands.
//!
//! Exit status: 0 on success, 1 when an operation was refused or failed, 2 on a usage error
//! (bad arguments, a bad plan, a configuration that does not load).

mod certs_cmd;
mod client_cmd;
mod config_cmd;
mod conn;
mod daemon;
mod lab_cmd;
mod migrate_cmd;
mod plan_cmd;
mod plugin_cmd;
mod render;
mod store_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A programmable VXLAN hub-and-spoke overlay for container and VM clusters",
    long_about = "Weir builds a VXLAN hub-and-spoke overlay between one host (the hub) and many \
                  runners, and hands policy decisions to sandboxed WebAssembly or gRPC plugins.",
    after_help = "Client commands send TRACEPARENT (and TRACESTATE) from the environment as the \
                  call's W3C trace context, so the host continues the caller's trace."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "WEIR_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Configuration file (default: /etc/weir/weir.toml when it exists).
    #[arg(long, global = true, env = "WEIR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub conn: conn::Conn,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an address plan BASE/PREFIX/NODE_BITS/SUBNET_BITS (or a flat BASE/PREFIX): overlay,
    /// host IP and runner blocks.
    Plan(plan_cmd::PlanArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Run the host (hub) daemon.
    Host,
    /// Run a runner agent.
    Runner,
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
    /// Policy plugins: check, eval and bench a component; list and reload the host's plugins.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
    /// Read the policy decision log.
    Decisions(plugin_cmd::DecisionsArgs),
    /// A whole cluster in network namespaces on this machine.
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// A CA and certificates for TLS and mTLS: `weir certs ca`, `host`, `runner`.
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// The host's state store: `weir store migrate --from redb --to etcd` (and back).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Take over another system's running overlay in place (KohakuRiver).
    #[command(subcommand)]
    Migrate(migrate_cmd::MigrateCommand),
    /// Print a shell completion script to stdout (e.g. `weir completion bash >
    /// /etc/bash_completion.d/weir`).
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of `weir` to stdout, or write one page per command into
    /// a directory (weir.1, weir-attach.1, weir-plugin-check.1, …).
    Man {
        /// Write every page into this directory (created if missing) instead of printing
        /// weir(1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// A command's failure, mapped to the documented exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The operation was refused or failed: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        CliError::Usage(format!("invalid configuration:\n{e}"))
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // The lab merges a configuration given on its command line, not one from WEIR_CONFIG
    // (which usually names this machine's own).
    let config_on_command_line =
        matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine);
    // Daemons install logging together with traces and metrics, once their config is loaded.
    if !matches!(cli.command, Command::Host | Command::Runner) {
        logging::init(cli.log_format);
    }
    match run(cli, config_on_command_line) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn run(cli: Cli, config_on_command_line: bool) -> Result<(), CliError> {
    match cli.command {
        Command::Plan(args) => plan_cmd::run(args, cli.conn.json),
        Command::Config(cmd) => config_cmd::run(cmd, cli.config.as_deref(), cli.conn.json),
        Command::Host => daemon::host(cli.config.as_deref(), cli.log_format),
        Command::Runner => daemon::runner(cli.config.as_deref(), cli.log_format),
        Command::Client(cmd) => client_cmd::run(cmd, cli.conn, cli.config.as_deref()),
        Command::Lab(cmd) => lab_cmd::run(
            cmd,
            cli.config.as_deref().filter(|_| config_on_command_line),
        ),
        Command::Certs(cmd) => certs_cmd::run(cmd),
        Command::Migrate(cmd) => migrate_cmd::run(cmd, cli.config.as_deref(), cli.conn.json),
        Command::Store(cmd) => {
            let loaded = crate::config::load(cli.config.as_deref())?;
            store_cmd::run(cmd, &loaded, cli.conn.json)
        }
        Command::Plugin(cmd) => plugin_cmd::run(cmd, cli.conn, cli.config.as_deref()),
        Command::Decisions(a) => plugin_cmd::decisions(a, cli.conn.json, cli.config.as_deref()),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "weir", &mut script);
            print_bytes(&script)
        }
        Command::Man { dir } => man(dir.as_deref()),
    }
}

/// `weir man`: weir(1) on stdout, or every command's page into `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<(), CliError> {
    let cmd = Cli::command();
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(|e| CliError::Failed(format!("render the man page: {e}")))?;
            print_bytes(&page)
        }
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| CliError::Failed(format!("create {}: {e}", d.display())))?;
            clap_mangen::generate_to(cmd, d)
                .map_err(|e| CliError::Failed(format!("write man pages to {}: {e}", d.display())))
        }
    }
}

/// Write `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Failed(format!("write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// An argument that should have been `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not KEY=VALUE")]
pub struct NotKeyValue(String);

/// A `KEY=VALUE` argument (labels, plugin settings); the value may contain `=`.
pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotKeyValue(s.to_string()))
}

/// Render rows as a left-aligned text table with a header.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command, flag and positional of the whole tree shows a help text (in `--help`,
    /// the man pages and the completions).
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path}: argument {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{p}: the command itself"));
                }
                walk(sub, &p, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "weir", &mut missing);
        assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));
        // The walk sees the whole tree (nested commands and global flags included).
        let lab_up = cmd
            .find_subcommand("lab")
            .and_then(|l| l.find_subcommand("up"))
            .expect("weir lab up");
        assert!(lab_up.get_arguments().any(|a| a.get_id() == "runners"));
    }

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("tenant=a=b"),
            Ok(("tenant".into(), "a=b".into()))
        );
        assert_eq!(
            parse_key_value("tenant").unwrap_err().to_string(),
            "\"tenant\" is not KEY=VALUE"
        );
    }
}
