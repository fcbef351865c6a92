//! Running the real `tributary-edge` command against a test gateway.
//!
//! ```text
//!  edge(args, token)   tributary-edge <args>, the token in a file (--token-file)
//!                      or none; returns its exit code, stdout and stderr
//! ```

use crate::worker::built;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The edge client's binary, built once per test process.
pub fn edge_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    // With the fault tests' crash points (TRIBUTARY_FAILPOINT).
    BIN.get_or_init(|| {
        built(
            "tributary-edge",
            "tributary-edge",
            &["--features", "failpoints"],
        )
    })
    .clone()
}

/// What a run of the command gave.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tributary-edge args…`; with `token`, it is passed in a file with
/// `--token-file` after the arguments (every command that syncs takes it).
pub fn edge(args: &[&str], token: Option<&str>) -> Ran {
    edge_with(args, token, &[])
}

/// [`edge`] with environment variables (a failpoint: `TRIBUTARY_FAILPOINT`).
pub fn edge_with(args: &[&str], token: Option<&str>, env: &[(&str, &str)]) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(edge_bin());
    c.args(args)
        .env_remove("TRIBUTARY_EDGE_TOKEN")
        .env_remove("TRIBUTARY_FAILPOINT")
        .envs(env.iter().copied());
    if let Some(t) = token {
        let f = dir.path().join("token");
        std::fs::write(&f, t).unwrap();
        c.arg("--token-file").arg(&f);
    }
    let out = c.output().expect("tributary-edge runs");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tributary-edge run …` as a child process, killed when dropped; its
/// stdout and stderr go to a log file.
pub struct EdgeDaemon {
    child: std::process::Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl EdgeDaemon {
    /// Starts `tributary-edge run args…` with `token` in a file.
    pub fn start(args: &[&str], token: &str) -> EdgeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, token).unwrap();
        let log = dir.path().join("edge.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(edge_bin())
            .arg("run")
            .args(args)
            .arg("--token-file")
            .arg(&f)
            .env_remove("TRIBUTARY_EDGE_TOKEN")
            .env_remove("TRIBUTARY_FAILPOINT")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("tributary-edge runs");
        EdgeDaemon {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit code, once it has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Its exit code, waiting up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(code) = self.exited() {
                return Some(code);
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits until `f` holds, or fails with the log after `timeout`.
    pub fn until(&self, timeout: std::time::Duration, what: &str, mut f: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if f() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "timed out waiting for {what}; the edge client's log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for EdgeDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
