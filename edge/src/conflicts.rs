//! Conflicts: this peer's edits the hub logged as `MANUAL` (the ladder could
//! not decide them), listed and settled from the device.
//!
//! ```text
//!  conflicts()          GET /v1/conflicts?status=all ──> the open ones; the file's
//!                       _tributary_errors MANUAL rows of conflicts settled since
//!                       (here or elsewhere) are cleared
//!  resolve(id, choice)  POST /v1/conflicts/{id}/resolve
//!                         KeepLocal  = the device's edit  (the hub's "take_remote")
//!                         TakeRemote = the hub's row      (the hub's "keep_local")
//!                       ──> a new hub revision, which every peer gets; this file gets
//!                       it by a pull of that table, and its MANUAL row is cleared
//! ```
//!
//! "Local" and "remote" are the device's words here: local is what the
//! device wrote, remote what the hub held.

use crate::error::{Error, HubError, Result};
use crate::sync::{enc, Progress};
use crate::Edge;
use serde_json::Value;

/// One open conflict of this peer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conflict {
    pub id: i64,
    /// The table in the file (None: a hub table this file does not hold).
    pub table: Option<String>,
    /// The hub table (quoted).
    pub hub_table: String,
    pub pk: Value,
    /// The columns both sides changed (empty: a delete against an update).
    pub columns: Vec<String>,
    /// What the device wrote (null: a delete).
    pub local: Value,
    /// What the hub held (null: deleted).
    pub remote: Value,
    /// What the hub holds meanwhile: "local" (the device's) or "remote".
    pub holding: String,
    pub created_at: String,
}

/// Which side of a conflict wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The device's edit.
    KeepLocal,
    /// The hub's row.
    TakeRemote,
}

impl Choice {
    /// The resolution as the hub names it (its "local" is the hub's row).
    fn hub_word(self) -> &'static str {
        match self {
            Choice::KeepLocal => "take_remote",
            Choice::TakeRemote => "keep_local",
        }
    }
}

fn malformed(what: &str) -> Error {
    Error::Hub(HubError {
        status: 200,
        message: format!("the gateway's answer lacks {what}"),
        ..Default::default()
    })
}

impl Edge {
    /// The file table of a hub table (`schema`, `name`), if it holds it.
    fn file_table(&mut self, schema: &str, name: &str) -> Result<Option<String>> {
        let hub = tributary_core::quote::qualified(schema, name);
        Ok(self
            .file
            .conn()
            .prepare_cached("SELECT tbl FROM _tributary_tables WHERE hub = ?1")?
            .query_row([&hub], |r| r.get(0))
            .ok())
    }

    /// This peer's open conflicts, oldest first. The `MANUAL` rows of
    /// `_tributary_errors` whose conflicts are settled are cleared.
    pub fn conflicts(&mut self) -> Result<Vec<Conflict>> {
        let v = self.hub.get("/v1/conflicts?status=all")?;
        let all = v["conflicts"]
            .as_array()
            .ok_or_else(|| malformed("a conflicts array"))?;
        let mut open = Vec::new();
        let mut settled = Vec::new();
        for c in all {
            let id = c["id"].as_i64().ok_or_else(|| malformed("a conflict id"))?;
            if c["status"] != "open" {
                settled.push(id);
                continue;
            }
            let (schema, name) = (
                c["schema"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default(),
            );
            open.push(Conflict {
                id,
                table: self.file_table(schema, name)?,
                hub_table: tributary_core::quote::qualified(schema, name),
                pk: c["pk"].clone(),
                columns: c["columns"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                local: c["remote"].clone(),
                remote: c["local"].clone(),
                holding: match c["interim"].as_str() {
                    Some("remote") => "local".into(),
                    _ => "remote".into(),
                },
                created_at: c["created_at"].as_str().unwrap_or_default().to_string(),
            });
        }
        self.clear_settled(&settled)?;
        Ok(open)
    }

    /// Removes the `MANUAL` rows of settled conflicts from `_tributary_errors`.
    fn clear_settled(&mut self, ids: &[i64]) -> Result<()> {
        let tx = self.file.conn().transaction()?;
        for id in ids {
            tx.execute(
                "DELETE FROM _tributary_errors WHERE outcome = 'MANUAL' AND conflict_id = ?1",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Settles conflict `id` with `choice`, at the hub: the resolution is a
    /// new hub revision that every peer gets. This file gets it at once,
    /// by a pull of the conflict's table. Returns the table pulled.
    pub fn resolve(
        &mut self,
        id: i64,
        choice: Choice,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Option<String>> {
        let body = serde_json::json!({"resolution": choice.hub_word()}).to_string();
        let answer = self.hub.post_text(
            &format!("/v1/conflicts/{}/resolve", enc(&id.to_string())),
            body,
        )?;
        let v: Value = serde_json::from_str(&answer).map_err(|_| malformed("JSON"))?;
        self.clear_settled(&[id])?;
        let table = match (v["schema"].as_str(), v["name"].as_str()) {
            (Some(schema), Some(name)) => self.file_table(schema, name)?,
            _ => None,
        };
        if let Some(t) = &table {
            self.pull(std::slice::from_ref(t), progress)?;
        }
        Ok(table)
    }
}
