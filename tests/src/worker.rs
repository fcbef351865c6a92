//! Running the real `tributary-worker` binary against a test cluster.
//!
//! ```text
//!  setup_worker_role(db)     a LOGIN REPLICATION role "worker" (not a superuser)
//!                            with what sync_worker_grant gives it, registered
//!                            to speak for the peers edge1 and edge2
//!  WorkerProc::start(cfg)    tributary-worker run --config <tmp>/worker.toml, logs to a file
//!  kill9 / sigterm / wait    process control for the fault tests
//! ```

use crate::{Cluster, Db};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The worker binary, built once per test process.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The fault tests' crash points.
        built(
            "tributary-worker",
            "tributary-worker",
            &["--features", "failpoints"],
        )
    })
    .clone()
}

/// Builds the binary `bin` of `package` in this test process's profile
/// (with `extra` cargo arguments), and returns its path.
pub fn built(package: &str, bin: &str, extra: &[&str]) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(&root)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .args(extra);
    if profile == "release" {
        c.arg("--release");
    }
    // What cargo sets for this test process, not for a build: a build
    // script that tracks them (ring's does) would otherwise rebuild
    // here, and again in the next top-level build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*k,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            c.env_remove(&*k);
        }
    }
    let st = c
        .status()
        .unwrap_or_else(|e| panic!("cargo build of {bin}: {e}"));
    assert!(st.success(), "building {bin} failed");
    // Where cargo put it: CARGO_TARGET_DIR when set (relative to the
    // workspace, where the build ran), else the workspace's target/.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    target.join(profile).join(bin)
}

/// Creates the role `worker` (LOGIN REPLICATION, not a superuser) if the
/// cluster lacks it, and grants it what the worker needs in `db`.
pub fn setup_worker_role(db: &Db, queues: &[&str]) {
    let mut c = db.connect();
    c.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'worker') THEN
             CREATE ROLE worker LOGIN REPLICATION;
           END IF;
         END $$",
    )
    .unwrap();
    for q in queues {
        c.execute("SELECT sync_queue_create($1)", &[q]).unwrap();
    }
    c.batch_execute("SELECT sync_worker_grant('worker')")
        .unwrap();
    // The worker speaks for the SQLite peers the tests name edge1 and edge2
    // (their pulls go through sync_apply under those names). A peer a test
    // registered keeps its priority; a new one ranks last, as an
    // unregistered peer does.
    // (Releases before 0.5.0 have no roles for peers.)
    c.batch_execute(
        "DO $$ BEGIN
           IF to_regprocedure('sync_set_peer(text, integer, regrole)') IS NOT NULL THEN
             PERFORM sync_set_peer(p, coalesce((SELECT priority FROM tributary.peers WHERE name = p), 2147483647), 'worker')
                FROM unnest(ARRAY['edge1', 'edge2']) AS p;
           END IF;
         END $$",
    )
    .unwrap();
}

/// A worker configuration for `db` with the given `[[destination]]` blocks.
pub fn config(cluster: &Cluster, db: &Db, slot: &str, destinations: &str) -> String {
    format!(
        "[source]\nurl = \"postgres://worker@127.0.0.1:{}/{}\"\nslot = \"{slot}\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n{destinations}\n",
        cluster.port,
        db.name,
        crate::free_port()
    )
}

/// The `[http] listen` address of a configuration [`config`] made.
pub fn http_listen(config: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .expect("a listen line")
        .trim_end_matches('"')
        .to_string()
}

pub struct WorkerProc {
    child: Child,
    /// `run`, or `gateway`.
    subcommand: &'static str,
    pub log: PathBuf,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProc {
    pub fn start(config: &str, env: &[(&str, &str)]) -> WorkerProc {
        WorkerProc::start_command("run", config, env)
    }

    /// `tributary-worker <subcommand> --config <tmp>/worker.toml`.
    pub fn start_command(
        subcommand: &'static str,
        config: &str,
        env: &[(&str, &str)],
    ) -> WorkerProc {
        let dir = tempfile::Builder::new()
            .prefix("tributary-worker-")
            .tempdir()
            .unwrap();
        let cfg = dir.path().join("worker.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("worker.log");
        let mut w = WorkerProc {
            child: Command::new("true").spawn().unwrap(),
            subcommand,
            log,
            config: cfg,
            _dir: dir,
        };
        let _ = w.child.wait();
        w.spawn(env);
        w
    }

    /// (Re)starts the process with the same configuration and log file.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let mut logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(logf, "---- start ----").unwrap();
        let mut c = Command::new(worker_bin());
        c.args([self.subcommand, "--config"])
            .arg(&self.config)
            .env("TRIBUTARY_LOG", "tributary_worker=debug,info")
            .env_remove("TRIBUTARY_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(logf);
        for (k, v) in env {
            c.env(k, v);
        }
        self.child = c.spawn().expect("spawn tributary-worker");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        self.wait(timeout)
            .unwrap_or_else(|| panic!("worker did not exit after SIGTERM:\n{}", self.log_text()))
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits until the worker has created (or found) its slot.
    pub fn until_slot(&mut self, c: &mut crate::Client, slot: &str) {
        self.until(Duration::from_secs(60), "the slot", || {
            crate::scalar(
                c,
                &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            ) == 1
        });
    }

    /// [`wait_until`], with the worker's log in the failure message.
    pub fn until(&mut self, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + timeout;
        while !f() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "the worker exited ({st}) while waiting for {what}; its log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; worker log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the process so far, in kB (VmHWM).
    pub fn peak_rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns true, or panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
