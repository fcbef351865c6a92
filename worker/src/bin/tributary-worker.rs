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
use tributary_worker::config::{Config, GatewayConfig};
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
    /// Serve the sync gateway alone (the [gateway] section) until SIGTERM.
    /// Stateless: run as many as you like against one hub.
    Gateway {
        #[arg(long, env = "TRIBUTARY_CONFIG")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text", env = "TRIBUTARY_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Print the T-SQL that prepares a SQL Server peer (a kind = "mssql"
    /// destination) for a DBA to review: its tables made from the hub's,
    /// Tributary's own tables, snapshot isolation and Change Tracking.
    MssqlSetup {
        #[arg(long, env = "TRIBUTARY_CONFIG")]
        config: PathBuf,
        /// The destination's name.
        #[arg(long)]
        destination: String,
    },
    /// Stream the slot to the destinations until SIGTERM; with a [gateway]
    /// section, serve the gateway too.
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
    let metrics = Arc::new(Metrics::new(
        config
            .destinations
            .iter()
            .map(|d| (d.name.clone(), d.kind.name())),
    ));
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
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let gateway = config.gateway.clone().map(|g| {
            std::thread::spawn({
                let stop = shutdown.clone();
                move || serve_gateway(g, stop)
            })
        });
        let r = tributary_worker::pipeline::run(config, metrics, shutdown.clone()).await;
        shutdown.cancel();
        if let Some(g) = gateway {
            g.join()
                .map_err(|_| Error::bug("the gateway thread panicked"))??;
        }
        r
    })
}

/// Cancels `shutdown` at SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
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
    shutdown.cancel();
}

/// The gateway on a runtime of its own: many connections in parallel,
/// apart from the streaming pipeline's single thread.
fn serve_gateway(config: GatewayConfig, shutdown: CancellationToken) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()?;
    rt.block_on(async move {
        let r = tributary_worker::gateway::serve(config, shutdown.clone()).await;
        if let Err(e) = &r {
            // A gateway that cannot serve (its listener, its keys) is a
            // configuration error: the whole process stops and says so.
            tracing::error!(error = %e, "the gateway stopped");
            shutdown.cancel();
        }
        r
    })
}

fn gateway(config: GatewayConfig, log_format: LogFormat) -> Result<(), Error> {
    init_logging(log_format);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cancel_on_signal(stop));
        }
    });
    serve_gateway(config, shutdown)
}

fn try_main() -> Result<(), Error> {
    match Cli::parse().command {
        Command::CheckConfig { config } => {
            let c = Config::load(&config, |k| std::env::var(k).ok())?;
            print!("{}", c.redacted());
            Ok(())
        }
        Command::MssqlSetup {
            config,
            destination,
        } => {
            let c = Config::load(&config, |k| std::env::var(k).ok())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            print!(
                "{}",
                rt.block_on(tributary_worker::mssql::setup_from_hub(&c, &destination))?
            );
            Ok(())
        }
        Command::Gateway { config, log_format } => {
            let c = Config::load_gateway(&config, |k| std::env::var(k).ok())?;
            gateway(c, log_format)
        }
        Command::Run { config, log_format } => {
            let c = Config::load(&config, |k| std::env::var(k).ok())?;
            run(c, log_format)
        }
    }
}

fn main() -> ExitCode {
    tributary_worker::tls::install_ring();
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
