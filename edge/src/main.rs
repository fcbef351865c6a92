//! `tributary-edge`: the edge client's command line. It parses arguments,
//! calls the library and prints; every error leaves with its exit code
//! (see `tributary_edge::error`).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tributary_edge::{Choice, Edge, Error};

#[derive(Parser)]
#[command(
    name = "tributary-edge",
    version,
    about = "A SQLite peer file that syncs with a Tributary hub over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Token {
    /// A file holding the peer's token (else env TRIBUTARY_EDGE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// A file init made, and how to reach its hub.
#[derive(clap::Args)]
struct At {
    #[arg(long)]
    db: PathBuf,
    /// The gateway's URL, when it moved (default: the one init recorded).
    #[arg(long)]
    hub: Option<String>,
    #[command(flatten)]
    token: Token,
    /// Rows per page of a pull, each page one SQLite transaction (at most
    /// the gateway's max_page_size).
    #[arg(long, default_value_t = tributary_edge::sync::PAGE)]
    page_size: u32,
}

impl At {
    fn open(&self) -> Result<Edge, Error> {
        let mut edge = Edge::open(&self.db, self.hub.as_deref(), &token(&self.token)?)?;
        edge.set_page_size(self.page_size);
        Ok(edge)
    }
}

/// Progress on stderr: on a terminal, one line redrawn per page (rows, rows
/// per second and, for a full download the hub has statistics for, the
/// share done and the time left); otherwise a log line per page of a full
/// download, and one when a table is done.
fn progress(p: &tributary_edge::Progress) {
    use std::io::{IsTerminal, Write};
    if !(p.done || p.full) {
        return;
    }
    let estimate = p
        .estimate
        .filter(|e| *e > 0 && p.full)
        .map(|e| {
            let share = (p.rows_done as f64 / e as f64).min(1.0);
            let left = (e - p.rows_done).max(0) as f64 / p.rows_per_s.max(1.0);
            format!(" ~{:.0}% of ~{e}, ~{left:.0} s left", share * 100.0)
        })
        .unwrap_or_default();
    let line = format!(
        "{}: {} rows{} ({:.0} rows/s{estimate}){}",
        p.table,
        p.rows_done,
        if p.full { " of a full download" } else { "" },
        p.rows_per_s,
        if p.done { ", done" } else { "" }
    );
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{line}{}", if p.done { "\n" } else { "" });
        let _ = err.flush();
    } else {
        let _ = writeln!(err, "{line}");
    }
}

/// What the daemon says as it goes, on stderr.
fn report(e: tributary_edge::Event) {
    match e {
        tributary_edge::Event::Synced { pushed, pulled } => {
            let changes: i64 = pulled.iter().map(|p| p.rows).sum();
            if pushed.sent > 0 || changes > 0 {
                eprintln!(
                    "synced: pushed {} edits ({} to look at), pulled {changes} changes",
                    pushed.sent, pushed.attention
                );
            }
        }
        tributary_edge::Event::Failed { error, retry_in } => {
            eprintln!("tributary-edge: {error}\nretrying in {retry_in:?}; the file keeps working meanwhile")
        }
        tributary_edge::Event::Recovered => eprintln!("back in step with the hub"),
    }
}

fn print_pulled(pulled: &[tributary_edge::Pulled]) {
    for p in pulled {
        println!(
            "pulled {}: {} changes, now at version {}{}",
            p.table,
            p.rows,
            p.version,
            if p.full { " (full)" } else { "" }
        );
    }
}

fn print_pushed(p: &tributary_edge::Pushed) {
    println!(
        "pushed {} edits; {} to look at in _tributary_errors",
        p.sent, p.attention
    );
}

fn print_conflicts(list: &[tributary_edge::Conflict], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(list).expect("conflicts are JSON")
        );
        return;
    }
    if list.is_empty() {
        println!("no open conflicts");
    }
    for c in list {
        println!(
            "conflict {} on {} {} (columns: {})\n  local  (the device's edit): {}\n  remote (the hub's row):     {}\n  the hub holds the {} one until it is resolved; logged {}",
            c.id,
            c.table.as_deref().unwrap_or(&c.hub_table),
            c.pk,
            if c.columns.is_empty() { "the whole row".to_string() } else { c.columns.join(", ") },
            c.local,
            c.remote,
            c.holding,
            c.created_at
        );
    }
}

#[derive(Subcommand)]
enum Command {
    /// Makes FILE a peer of the gateway at URL: its tables come from the hub's schema.
    Init {
        #[arg(long)]
        hub: String,
        #[arg(long)]
        db: PathBuf,
        #[command(flatten)]
        token: Token,
    },
    /// Sends the app's edits to the hub.
    Push {
        #[command(flatten)]
        at: At,
    },
    /// Brings tables (all, or each --table) up to the hub's version.
    Pull {
        #[command(flatten)]
        at: At,
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Push, then pull.
    Sync {
        #[command(flatten)]
        at: At,
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Empties tables (all, or each --table); their next pull is a full download.
    Purge {
        #[arg(long)]
        db: PathBuf,
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Discard unsent edits (recorded in _tributary_errors as PURGED).
        #[arg(long)]
        force: bool,
    },
    /// This peer's open conflicts: what the device wrote (local) and what the hub held (remote).
    Conflicts {
        #[command(flatten)]
        at: At,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Settles a conflict at the hub (a new revision every peer gets), then pulls its table.
    Resolve {
        /// The conflict's id (from `conflicts`).
        id: i64,
        #[command(flatten)]
        at: At,
        /// The device's edit wins.
        #[arg(
            long,
            conflicts_with = "take_remote",
            required_unless_present = "take_remote"
        )]
        keep_local: bool,
        /// The hub's row wins.
        #[arg(long)]
        take_remote: bool,
    },
    /// Keeps the file in step until stopped: syncs every --interval, pushes the app's
    /// edits as they come, and long-polls the gateway between syncs. Offline, it backs off.
    Run {
        #[command(flatten)]
        at: At,
        /// Time between full syncs: 500ms, 5s, 2m.
        #[arg(long, default_value = "5s", value_parser = tributary_edge::parse_interval)]
        interval: std::time::Duration,
    },
    /// Unsent edits per table, each table's version and last sync, and open errors.
    Status {
        #[arg(long)]
        db: PathBuf,
        /// The gateway's URL, when it moved (default: the one init recorded).
        #[arg(long)]
        hub: Option<String>,
        #[command(flatten)]
        token: Token,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn token(t: &Token) -> Result<String, Error> {
    match &t.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| Error::Usage(format!("cannot read the token file {}: {e}", f.display()))),
        None => std::env::var("TRIBUTARY_EDGE_TOKEN").map_err(|_| {
            Error::Usage("no token: pass --token-file FILE or set TRIBUTARY_EDGE_TOKEN".into())
        }),
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Init { hub, db, token: t } => {
            let mut edge = Edge::init(&db, &hub, &token(&t)?)?;
            let s = edge.status()?;
            println!(
                "{} is a peer of {}: {} tables",
                db.display(),
                s.hub,
                s.tables.len()
            );
            for t in &s.tables {
                println!("  {} <- {}", t.table, t.hub_table);
            }
        }
        Command::Push { at } => print_pushed(&at.open()?.push()?),
        Command::Pull { at, tables } => print_pulled(&at.open()?.pull(&tables, &mut progress)?),
        Command::Sync { at, tables } => {
            let (pushed, pulled) = at.open()?.sync(&tables, &mut progress)?;
            print_pushed(&pushed);
            print_pulled(&pulled);
        }
        Command::Conflicts { at, json } => print_conflicts(&at.open()?.conflicts()?, json),
        Command::Resolve {
            id,
            at,
            keep_local,
            take_remote: _,
        } => {
            let choice = if keep_local {
                Choice::KeepLocal
            } else {
                Choice::TakeRemote
            };
            let table = at.open()?.resolve(id, choice, &mut progress)?;
            println!(
                "resolved conflict {id}: {} wins{}",
                if keep_local {
                    "the device's edit"
                } else {
                    "the hub's row"
                },
                table.map_or(String::new(), |t| format!("; {t} pulled"))
            );
        }
        Command::Run { at, interval } => {
            let mut edge = at.open()?;
            eprintln!(
                "running: a sync every {interval:?}, and hub changes as they come (stop with Ctrl-C)"
            );
            edge.run(interval, &|| false, &mut progress, &mut report)?;
        }
        Command::Purge { db, tables, force } => {
            // The file alone: no token needed.
            let mut edge = Edge::open(&db, None, "-")?;
            for (t, n) in edge.purge(&tables, force)? {
                println!("purged {t}: {n} rows; its next pull is a full download");
            }
        }
        Command::Status {
            db,
            hub,
            token: t,
            json,
        } => {
            // Status reads the file alone: a token is needed only to sync.
            let tok = token(&t).unwrap_or_else(|_| "-".into());
            let mut edge = Edge::open(&db, hub.as_deref(), &tok)?;
            let s = edge.status()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).expect("status is JSON")
                );
            } else {
                println!("hub: {}", s.hub);
                println!(
                    "{:<30} {:>8} {:>12}  last sync",
                    "table", "unsent", "version"
                );
                for t in &s.tables {
                    println!(
                        "{:<30} {:>8} {:>12}  {}",
                        t.table,
                        t.unsent,
                        t.version.map_or("-".into(), |v| v.to_string()),
                        t.synced_at.as_deref().unwrap_or("never")
                    );
                }
                println!("open errors: {}", s.errors);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary-edge: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
