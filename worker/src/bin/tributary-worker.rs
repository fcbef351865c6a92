//! `tributary-worker`: a thin binary over the library.
//!
//! `main → try_main → ExitCode`: setup errors print a message and exit 2
//! for a definite error (fix the configuration), 1 for a transient one.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tributary_worker::config::Config;
use tributary_worker::error::{Error, ErrorKind};

#[derive(Parser)]
#[command(
    name = "tributary-worker",
    version,
    about = "Tributary worker: fans the hub's changes out to peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it, with secrets redacted.
    CheckConfig {
        #[arg(long, env = "TRIBUTARY_CONFIG")]
        config: PathBuf,
    },
}

fn try_main() -> Result<(), Error> {
    match Cli::parse().command {
        Command::CheckConfig { config } => {
            let c = Config::load(&config, |k| std::env::var(k).ok())?;
            print!("{}", c.redacted());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary-worker: {e}");
            ExitCode::from(match e.kind() {
                ErrorKind::Definite => 2,
                ErrorKind::Transient => 1,
            })
        }
    }
}
