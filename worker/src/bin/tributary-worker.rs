//! `tributary-worker`: a thin binary over the library.
//!
//! `main → try_main → ExitCode`. Setup (configuration, logging, the HTTP
//! listener) finishes before the pipeline starts. Exit codes: 0 after a
//! clean shutdown (SIGTERM/SIGINT), 2 for a definite error (the operator
//! must act), 1 for a transient one met during setup.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tributary_worker::config::{Config, Kind};
use tributary_worker::error::{Action, Error};
use tributary_worker::metrics::Metrics;

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

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it, with secrets redacted.
    CheckConfig {
        #[arg(long, env = "TRIBUTARY_CONFIG")]
        config: PathBuf,
    },
    /// Stream the slot to the destinations until SIGTERM.
    Run {
        #[arg(long, env = "TRIBUTARY_CONFIG")]
        config: PathBuf,
        /// Log lines as text or as JSON objects (one per line).
        #[arg(long, value_enum, default_value = "text", env = "TRIBUTARY_LOG_FORMAT")]
        log_format: LogFormat,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIBUTARY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn run(config: Config, log_format: LogFormat) -> Result<(), Error> {
    init_logging(log_format);
    let metrics = Arc::new(Metrics::new(config.destinations.iter().map(|d| {
        (
            d.name.clone(),
            match d.kind {
                Kind::Queue => "queue",
                Kind::Sqlite => "sqlite",
            },
        )
    })));
    // One thread: the worker's own work (decoding, JSON) is light next to
    // the server's, and cross-thread wake-ups between the stream and the
    // sinks cost more than they give: bench/fanout went from 0.66 to 0.88
    // of pg_recvlogical's rows/s with this change.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(&config.http.listen)
            .await
            .map_err(|e| Error::Config(format!("http.listen {}: {e}", config.http.listen)))?;
        tracing::info!(listen = %config.http.listen, "serving /metrics and /healthz");
        tokio::spawn(tributary_worker::http::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            signals.cancel();
        });
        let r = tributary_worker::pipeline::run(config, metrics, shutdown.clone()).await;
        shutdown.cancel();
        r
    })
}

fn try_main() -> Result<(), Error> {
    match Cli::parse().command {
        Command::CheckConfig { config } => {
            let c = Config::load(&config, |k| std::env::var(k).ok())?;
            print!("{}", c.redacted());
            Ok(())
        }
        Command::Run { config, log_format } => {
            let c = Config::load(&config, |k| std::env::var(k).ok())?;
            run(c, log_format)
        }
    }
}

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary-worker: {e}");
            // 2: the operator must act (the error policy stops); 1: anything else.
            ExitCode::from(match e.action() {
                Action::Stop => 2,
                Action::Retry | Action::Detach => 1,
            })
        }
    }
}
