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
