//! `weir config`: inspect the effective configuration.

use std::path::Path;

use clap::Subcommand;

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults < file < environment) as TOML, or as one
    /// JSON object with --json.
    Show,
}

pub fn run(cmd: ConfigCommand, file: Option<&Path>, json: bool) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Show => {
            let loaded = crate::config::load(file)?;
            if json {
                let v = serde_json::to_value(&loaded.config)
                    .map_err(|e| CliError::Failed(format!("render the configuration: {e}")))?;
                super::render::print_json(&v);
                return Ok(());
            }
            match &loaded.file {
                Some(p) => println!(
                    "# effective configuration: defaults < {} < environment",
                    p.display()
                ),
                None => println!("# effective configuration: defaults < environment (no file)"),
            }
            print!("{}", loaded.to_toml());
            Ok(())
        }
    }
}
