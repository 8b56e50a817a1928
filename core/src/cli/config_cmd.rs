//! `weir config`: inspect the effective configuration.

use std::path::Path;

use clap::Subcommand;

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults < file < environment) as TOML.
    Show,
}

pub fn run(cmd: ConfigCommand, file: Option<&Path>) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Show => {
            let loaded = crate::config::load(file)?;
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
