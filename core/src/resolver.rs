//! The conflict resolver's decisions, as pure logic (no pgrx).
//!
//! ```text
//!  hub state of a key = per column: value + stamp (revision, origin)
//!                       + the delete stamp, if the key was ever deleted
//!  incoming change    = op, the columns it sets, its version (= base + 1), origin
//!
//!  each column it sets ──compare──> the hub's column:   larger stamp wins
//!  a delete            ──compare──> the row's largest column stamp
//!  the key is alive while its largest column stamp beats its delete stamp
//! ```
//!
//! Stamps are totally ordered: higher **revision** first; then better
//! **priority** (lower number) of the writer; then a deterministic
//! **tie-break** (the larger origin name, an update over a delete, the larger
//! value text). Every piece of state only ever moves to a larger stamp, so
//! the final state is the same whatever order changes arrive in: the hub and
//! every replica converge (see the property test below). Priorities must not
//! change while changes are in flight for that to hold.
//!
//! The ladder outcomes describe how a change compared:
//! `NEW_RECORD` no state for the key; `VERSION_WIN` every column it set (or
//! its delete) won by revision, as a fast-forward; `STALE_SKIP` it lost
//! everything by revision; `FIELD_MERGE` it won some columns by revision
//! and the hub kept newer others, or the hub's row had moved on in other
//! columns; `PRIORITY_WIN` an overlap was decided by priority (which side
//! won is in the detail); `MANUAL` an overlap between equal priorities,
//! decided for now by the tie-break and logged as a conflict.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

/// Shared text: origins, column names and values are cloned with the state
/// of every key a batch touches, so they are reference-counted, not copied.
pub type Text = std::rc::Rc<str>;

/// Who wrote a value, at which revision (and hybrid-clock time, for
/// last-writer-wins tables; 0 otherwise). An empty origin is the hub itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub revision: i64,
    pub origin: Text,
    pub ts: i64,
}

/// A table's policy for overlaps at the same revision (steps 4-6 of the
/// ladder). `Ladder` and `LastWriterWins` converge in any arrival order;
/// `HubWins` and `PeerWins` are defined by arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Ladder,
    LastWriterWins,
    HubWins,
    PeerWins,
    /// A user function merges the overlap; the resolver keeps the hub's
    /// values and names the columns (`Decision::custom`) for the caller.
    Custom,
}

impl Policy {
    /// Every policy, as `tributary.policies.policy` may hold it.
    pub const ALL: [Policy; 5] = [
        Policy::Ladder,
        Policy::LastWriterWins,
        Policy::HubWins,
        Policy::PeerWins,
        Policy::Custom,
    ];

    /// The policy's name in SQL (`sync_set_policy`, `tributary.policies`).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Ladder => "ladder",
            Policy::LastWriterWins => "last_writer_wins",
            Policy::HubWins => "hub_wins",
            Policy::PeerWins => "peer_wins",
            Policy::Custom => "custom",
        }
    }

    /// The policy named `s` in SQL; `None` for an unknown name.
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// A column's value (canonical JSON text) and its stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub value: Text,
    pub stamp: Stamp,
}

/// The table's rules: peer priorities (lower is better; the hub's own
/// writes, an empty origin, rank 0 unless set; unknown peers rank last) and
/// its policy.
#[derive(Clone, Debug, Default)]
pub struct Priorities {
    pub peers: HashMap<String, i32>,
    pub policy: Policy,
}

impl Priorities {
    pub fn of(&self, origin: &str) -> i32 {
        match self.peers.get(origin) {
            Some(p) => *p,
            None if origin.is_empty() => 0,
            None => i32::MAX,
        }
    }
}

/// What decided a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum By {
    Same,
    Revision,
    Priority,
    TieBreak,
    /// The hybrid clock (last-writer-wins tables).
    Clock,
    /// hub_wins / peer_wins.
    Policy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Delete,
    Update,
}

fn compare(a: (&Stamp, Kind, &str), b: (&Stamp, Kind, &str), prio: &Priorities) -> (Ordering, By) {
    let by_rev = a.0.revision.cmp(&b.0.revision);
    if by_rev != Ordering::Equal {
        return (by_rev, By::Revision);
    }
    if prio.policy == Policy::LastWriterWins {
        let by_clock = a.0.ts.cmp(&b.0.ts);
        if by_clock != Ordering::Equal {
            return (by_clock, By::Clock);
        }
    } else {
        // Lower number is better priority, so compare reversed.
        let by_prio = prio.of(&b.0.origin).cmp(&prio.of(&a.0.origin));
        if by_prio != Ordering::Equal {
            return (by_prio, By::Priority);
        }
    }
    // The tie-break ends in a total order: a clock that did not decide
    // (ladder tables) still separates otherwise identical writes.
    let tie =
        a.0.origin
            .cmp(&b.0.origin)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(b.2))
            .then(a.0.ts.cmp(&b.0.ts));
    if tie == Ordering::Equal {
        (Ordering::Equal, By::Same)
    } else {
        (tie, By::TieBreak)
    }
}

/// hub_wins / peer_wins decide an overlap at the same revision by who
/// arrived: the hub's current value, or the incoming one.
fn by_policy(decided: (Ordering, By), prio: &Priorities, same_value: bool) -> (Ordering, By) {
    match (decided.1, prio.policy) {
        (By::Priority | By::TieBreak, Policy::HubWins) if !same_value => {
            (Ordering::Less, By::Policy)
        }
        (By::Priority | By::TieBreak, Policy::PeerWins) if !same_value => {
            (Ordering::Greater, By::Policy)
        }
        (By::Priority | By::TieBreak, Policy::Custom) if !same_value => {
            (Ordering::Less, By::Policy)
        }
        _ => decided,
    }
}

/// A comparison under the table's policy: hub_wins / peer_wins override
/// priority and tie-break; under last_writer_wins the deterministic
/// tie-break after equal clocks is part of the policy, not a conflict.
fn decide(decided: (Ordering, By), prio: &Priorities, same_value: bool) -> (Ordering, By) {
    let d = by_policy(decided, prio, same_value);
    if d.1 == By::TieBreak && prio.policy == Policy::LastWriterWins {
        (d.0, By::Clock)
    } else {
        d
    }
}

fn policy_outcome(p: Policy) -> Outcome {
    match p {
        Policy::LastWriterWins => Outcome::LastWriterWins,
        Policy::HubWins => Outcome::HubWins,
        Policy::PeerWins => Outcome::PeerWins,
        Policy::Custom => Outcome::Custom,
        Policy::Ladder => Outcome::PriorityWin,
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::LastWriterWins => "last_writer_wins (hybrid clock)",
        Policy::HubWins => "hub_wins",
        Policy::PeerWins => "peer_wins",
        Policy::Custom => "custom",
        Policy::Ladder => "ladder",
    }
}

/// The hub's state of one key.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyState {
    pub alive: bool,
    /// The row's sync_version when alive; the tombstone's version when dead.
    pub version: i64,
    /// The row's columns when alive; the last image when dead.
    pub cells: BTreeMap<Text, Cell>,
    /// The stamp of the latest delete of the key.
    pub deleted: Option<Stamp>,
    /// The last writer (sync_origin, or the tombstone's origin).
    pub origin: Text,
}

impl KeyState {
    /// The largest column stamp (with its value, for the tie-break).
    fn top(&self, prio: &Priorities) -> Option<(&Stamp, &str)> {
        let mut best: Option<(&Stamp, &str)> = None;
        for c in self.cells.values() {
            let cand = (&c.stamp, &*c.value);
            best = match best {
                Some(b)
                    if compare(
                        (b.0, Kind::Update, b.1),
                        (cand.0, Kind::Update, cand.1),
                        prio,
                    )
                    .0 != Ordering::Less =>
                {
                    Some(b)
                }
                _ => Some(cand),
            };
        }
        best
    }

    fn max_revision(&self) -> i64 {
        self.cells
            .values()
            .map(|c| c.stamp.revision)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    /// The revision this change produces: the version the writer edited + 1.
    pub version: i64,
    pub origin: Text,
    /// The columns it sets, as canonical JSON text. For an insert or an
    /// update this includes the key columns, so that the row's version is
    /// always its largest column revision.
    pub values: BTreeMap<Text, Text>,
    /// ETag: apply only if the hub row is still at this version.
    pub expect_version: Option<i64>,
    /// Hybrid-clock time (last-writer-wins tables), 0 when absent.
    pub ts: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    NewRecord,
    VersionWin,
    StaleSkip,
    FieldMerge,
    PriorityWin,
    Manual,
    LastWriterWins,
    HubWins,
    PeerWins,
    Custom,
    /// Parked by `sync_apply`: a foreign-key parent is missing; retried
    /// when the parent's table is written (never decided by [`resolve`]).
    Deferred,
    /// A parked change that failed `tributary.max_retries` times
    /// (`sync_retry_pending`): a dead letter.
    DeadLetter,
    /// Refused by the hub with an error (bad data, a constraint): given by
    /// a puller that applied the change alone, never by `sync_apply`.
    Rejected,
}

impl Outcome {
    /// Every outcome, by its name.
    pub const ALL: [Outcome; 13] = [
        Outcome::NewRecord,
        Outcome::VersionWin,
        Outcome::StaleSkip,
        Outcome::FieldMerge,
        Outcome::PriorityWin,
        Outcome::Manual,
        Outcome::LastWriterWins,
        Outcome::HubWins,
        Outcome::PeerWins,
        Outcome::Custom,
        Outcome::Deferred,
        Outcome::DeadLetter,
        Outcome::Rejected,
    ];

    /// The outcome named `s`, as `sync_apply` returns it.
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether the writer must be told: a conflict logged for a person, a
    /// change parked, or one refused. These go to a peer's
    /// `_tributary_errors`.
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Outcome::Manual | Outcome::Deferred | Outcome::DeadLetter | Outcome::Rejected
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::NewRecord => "NEW_RECORD",
            Outcome::VersionWin => "VERSION_WIN",
            Outcome::StaleSkip => "STALE_SKIP",
            Outcome::FieldMerge => "FIELD_MERGE",
            Outcome::PriorityWin => "PRIORITY_WIN",
            Outcome::Manual => "MANUAL",
            Outcome::LastWriterWins => "LAST_WRITER_WINS",
            Outcome::HubWins => "HUB_WINS",
            Outcome::PeerWins => "PEER_WINS",
            Outcome::Custom => "CUSTOM",
            Outcome::Deferred => "DEFERRED",
            Outcome::DeadLetter => "DEAD_LETTER",
            Outcome::Rejected => "REJECTED",
        }
    }
}

/// An undecided overlap: the columns, and both sides' values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub columns: Vec<String>,
    /// Whether the incoming change won the tie-break (its values are now the hub's).
    pub remote_won: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The key's state after the change.
    pub state: KeyState,
    /// Whether the hub must write anything.
    pub changed: bool,
    pub conflict: Option<Conflict>,
    pub detail: String,
    /// Under the custom policy: the overlapping columns the user function
    /// must merge (the state still holds the hub's values for them).
    pub custom: Vec<String>,
}

fn fresh(change: &Change, revision: i64) -> BTreeMap<Text, Cell> {
    change
        .values
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Cell {
                    value: v.clone(),
                    stamp: Stamp {
                        revision,
                        origin: change.origin.clone(),
                        ts: change.ts,
                    },
                },
            )
        })
        .collect()
}

/// Decides one change against the hub's state of its key (`None`: the key
/// was never seen, or nothing of it remains).
pub fn resolve(state: Option<&KeyState>, change: &Change, prio: &Priorities) -> Decision {
    let incoming = Stamp {
        revision: change.version,
        origin: change.origin.clone(),
        ts: change.ts,
    };
    let Some(s) = state else {
        return match change.op {
            Op::Insert | Op::Update => Decision {
                outcome: Outcome::NewRecord,
                state: KeyState {
                    alive: true,
                    version: change.version,
                    cells: fresh(change, change.version),
                    deleted: None,
                    origin: change.origin.clone(),
                },
                changed: true,
                conflict: None,
                detail: "no row: inserted".into(),
                custom: vec![],
            },
            Op::Delete => Decision {
                outcome: Outcome::VersionWin,
                state: KeyState {
                    alive: false,
                    version: change.version,
                    cells: BTreeMap::new(),
                    deleted: Some(incoming),
                    origin: change.origin.clone(),
                },
                changed: true,
                conflict: None,
                detail: "no row: tombstone recorded, so an older insert cannot bring it back"
                    .into(),
                custom: vec![],
            },
        };
    };

    // ETag: a compare-and-set on the row's version, outside the ladder.
    if let Some(ev) = change.expect_version {
        if s.alive && s.version == ev {
            let revision = change.version.max(s.version + 1);
            let mut next = s.clone();
            next.origin = change.origin.clone();
            next.version = revision;
            match change.op {
                Op::Delete => {
                    next.alive = false;
                    next.deleted = Some(Stamp {
                        revision,
                        origin: change.origin.clone(),
                        ts: change.ts,
                    });
                }
                Op::Insert | Op::Update => next.cells.extend(fresh(change, revision)),
            }
            return Decision {
                outcome: Outcome::VersionWin,
                state: next,
                changed: true,
                conflict: None,
                detail: format!("expect_version {ev} matched: applied as revision {revision}"),
                custom: vec![],
            };
        }
    }

    match change.op {
        Op::Insert | Op::Update => resolve_write(s, change, &incoming, prio),
        Op::Delete => resolve_delete(s, change, &incoming, prio),
    }
}

/// How the columns of a write compared with the hub's.
#[derive(Default)]
struct Tally {
    won_rev: usize,
    lost_rev: usize,
    same: usize,
    /// (column, the incoming value won) per kind of decision.
    by_prio: Vec<(String, bool)>,
    by_rule: Vec<(String, bool)>,
    ties: Vec<(String, bool)>,
}

fn resolve_write(s: &KeyState, change: &Change, incoming: &Stamp, prio: &Priorities) -> Decision {
    let (mut next, tally) = compare_columns(s, change, incoming, prio);
    let any_won = next.cells != s.cells;
    let revive_by = (!s.alive).then(|| revive(s, &mut next, prio));
    if next.alive {
        next.version = s.version.max(next.max_revision());
        if !s.alive {
            next.version = next.max_revision();
        }
    }
    if any_won {
        next.origin = change.origin.clone();
    }
    let changed = next != *s;
    let manual = match revive_by {
        Some(by) => by == By::TieBreak,
        None => !tally.ties.is_empty(),
    };
    let (outcome, detail) = label_write(s, &next, change, &tally, revive_by, prio);
    let conflict = manual.then(|| Conflict {
        columns: tally.ties.iter().map(|t| t.0.clone()).collect(),
        remote_won: tally.ties.iter().all(|t| t.1),
    });
    let custom = if prio.policy == Policy::Custom && revive_by.is_none() {
        tally.by_rule.iter().map(|r| r.0.clone()).collect()
    } else {
        vec![]
    };
    Decision {
        outcome,
        state: next,
        changed,
        conflict,
        detail,
        custom,
    }
}

/// Each column the write sets against the hub's: the larger stamp wins.
/// Returns the state after it, and how the columns compared.
fn compare_columns(
    s: &KeyState,
    change: &Change,
    incoming: &Stamp,
    prio: &Priorities,
) -> (KeyState, Tally) {
    let mut next = s.clone();
    let mut t = Tally::default();
    for (col, value) in &change.values {
        // The same value at the same revision is no overlap, whoever wrote
        // it (e.g. the key columns every change carries); the stamp still
        // moves to the larger one so that all replicas agree on it.
        let same_value = s.cells.get(col).is_some_and(|c| &c.value == value);
        let (ord, by) = decide(
            match s.cells.get(col) {
                None => (Ordering::Greater, By::Revision),
                Some(cur) => compare(
                    (incoming, Kind::Update, value),
                    (&cur.stamp, Kind::Update, &cur.value),
                    prio,
                ),
            },
            prio,
            same_value,
        );
        let won = ord == Ordering::Greater;
        match by {
            By::Same => t.same += 1,
            By::Priority | By::TieBreak | By::Clock | By::Policy if same_value => t.same += 1,
            By::Revision if won => t.won_rev += 1,
            By::Revision => t.lost_rev += 1,
            By::Priority => t.by_prio.push((col.to_string(), won)),
            By::TieBreak => t.ties.push((col.to_string(), won)),
            By::Clock | By::Policy => t.by_rule.push((col.to_string(), won)),
        }
        if won {
            next.cells.insert(
                col.clone(),
                Cell {
                    value: value.clone(),
                    stamp: incoming.clone(),
                },
            );
        }
    }
    (next, t)
}

/// A dead key comes back when its largest column stamp beats the delete.
/// Sets `next.alive`; returns how the comparison was decided.
fn revive(s: &KeyState, next: &mut KeyState, prio: &Priorities) -> By {
    let top = next.top(prio);
    let del = s.deleted.clone().unwrap_or(Stamp {
        revision: 0,
        origin: "".into(),
        ts: 0,
    });
    let (ord, by) = decide(
        match top {
            Some((st, v)) => compare((st, Kind::Update, v), (&del, Kind::Delete, ""), prio),
            None => (Ordering::Less, By::Revision),
        },
        prio,
        false,
    );
    next.alive = ord == Ordering::Greater;
    by
}

/// The ladder label of a write, and its detail. For a deleted key, what
/// decides is the comparison with the delete; column-level outcomes only
/// refresh the tombstone's image.
fn label_write(
    s: &KeyState,
    next: &KeyState,
    change: &Change,
    t: &Tally,
    revive_by: Option<By>,
    prio: &Priorities,
) -> (Outcome, String) {
    label_overlap(s, next, change, t, revive_by, prio)
        .unwrap_or_else(|| label_by_revision(s, next, change, t))
}

fn kept(won: bool) -> &'static str {
    if won {
        "the incoming value is kept"
    } else {
        "the hub's value is kept"
    }
}

/// An overlap at the same revision: decided by the tie-break (MANUAL), a
/// policy, or priority. None when revisions decided everything.
fn label_overlap(
    s: &KeyState,
    next: &KeyState,
    change: &Change,
    t: &Tally,
    revive_by: Option<By>,
    prio: &Priorities,
) -> Option<(Outcome, String)> {
    let (manual, prioritized, ruled) = match revive_by {
        Some(by) => (
            by == By::TieBreak,
            by == By::Priority,
            matches!(by, By::Clock | By::Policy),
        ),
        None => (
            !t.ties.is_empty(),
            !t.by_prio.is_empty(),
            !t.by_rule.is_empty(),
        ),
    };
    if manual {
        let what = if t.ties.is_empty() {
            "the row's existence".to_string()
        } else {
            join(&t.ties)
        };
        return Some((
            Outcome::Manual,
            format!(
                "equal revision {} and equal priority on {what}: {} for now (tie-break), logged as a conflict",
                change.version,
                kept(t.ties.iter().all(|x| x.1))
            ),
        ));
    }
    if ruled {
        let won = t.by_rule.iter().any(|p| p.1) || (revive_by.is_some() && next.alive);
        return Some((
            policy_outcome(prio.policy),
            format!(
                "{} at revision {}: {}",
                policy_name(prio.policy),
                change.version,
                kept(won)
            ),
        ));
    }
    if !prioritized {
        return None;
    }
    let won = t.by_prio.iter().any(|p| p.1) || (revive_by == Some(By::Priority) && next.alive);
    let hub_origin = s
        .cells
        .get(t.by_prio.first().map(|p| p.0.as_str()).unwrap_or(""))
        .map(|c| c.stamp.origin.clone())
        .or_else(|| s.deleted.as_ref().map(|d| d.origin.clone()))
        .unwrap_or_default();
    Some((
        Outcome::PriorityWin,
        format!(
            "{} (priority {}) {} {} (priority {}) at revision {}",
            name(&change.origin),
            prio.of(&change.origin),
            if won { "outranks" } else { "is outranked by" },
            name(&hub_origin),
            prio.of(&hub_origin),
            change.version
        ),
    ))
}

/// Decided by revisions alone: a revived or still deleted key, a stale
/// write, a fast-forward, or a merge.
fn label_by_revision(
    s: &KeyState,
    next: &KeyState,
    change: &Change,
    t: &Tally,
) -> (Outcome, String) {
    if !s.alive {
        return if next.alive {
            (
                Outcome::VersionWin,
                format!(
                    "newer than the delete at revision {}: the row is back",
                    s.version
                ),
            )
        } else {
            (
                Outcome::StaleSkip,
                format!("the row was deleted at revision {}", s.version),
            )
        };
    }
    if t.won_rev == 0 {
        return if t.same > 0 && t.lost_rev == 0 {
            (Outcome::StaleSkip, "already applied".into())
        } else {
            (
                Outcome::StaleSkip,
                format!("the hub's row is newer (revision {})", s.version),
            )
        };
    }
    if t.lost_rev == 0 && change.version > s.version {
        (
            Outcome::VersionWin,
            format!("revision {} over {}", change.version, s.version),
        )
    } else {
        (
            Outcome::FieldMerge,
            format!(
                "merged at revision {}: the hub's newer changes to other columns are kept",
                next.version
            ),
        )
    }
}

fn resolve_delete(s: &KeyState, change: &Change, incoming: &Stamp, prio: &Priorities) -> Decision {
    let mut next = s.clone();
    // The delete register keeps the largest delete, in the same order that
    // decides existence.
    let newer = s.deleted.as_ref().is_none_or(|d| {
        compare((incoming, Kind::Delete, ""), (d, Kind::Delete, ""), prio).0 == Ordering::Greater
    });
    if !s.alive {
        if newer {
            next.deleted = Some(incoming.clone());
            next.version = s.version.max(change.version);
            next.origin = change.origin.clone();
        }
        let changed = next != *s;
        return Decision {
            outcome: if changed {
                Outcome::VersionWin
            } else {
                Outcome::StaleSkip
            },
            state: next,
            changed,
            conflict: None,
            detail: format!("already deleted at revision {}", s.version),
            custom: vec![],
        };
    }
    let (ord, by) = decide(
        match s.top(prio) {
            Some((st, v)) => compare((incoming, Kind::Delete, ""), (st, Kind::Update, v), prio),
            None => (Ordering::Greater, By::Revision),
        },
        prio,
        false,
    );
    let wins = ord == Ordering::Greater;
    if wins {
        next.alive = false;
        if newer {
            next.deleted = Some(incoming.clone());
        }
        next.version = change.version.max(s.version);
        next.origin = change.origin.clone();
    } else if newer {
        // Remembered even when it loses, so that the same set of changes
        // gives the same state in any order.
        next.deleted = Some(incoming.clone());
    }
    let changed = next != *s;
    let (outcome, detail) = match by {
        By::TieBreak => (
            Outcome::Manual,
            format!(
                "delete and update at equal revision {} and priority: {} for now, logged as a conflict",
                change.version,
                if wins { "deleted" } else { "the row is kept" }
            ),
        ),
        By::Priority => (
            Outcome::PriorityWin,
            format!("delete by {} {} by priority", name(&change.origin), if wins { "wins" } else { "loses" }),
        ),
        By::Clock | By::Policy => (
            policy_outcome(prio.policy),
            format!("{}: delete {}", policy_name(prio.policy), if wins { "applied" } else { "not applied" }),
        ),
        _ if wins => (Outcome::VersionWin, format!("deleted at revision {}", next.version)),
        _ => (Outcome::StaleSkip, format!("the row changed after the delete's base (revision {})", s.version)),
    };
    let conflict = (outcome == Outcome::Manual).then(|| Conflict {
        columns: vec![],
        remote_won: wins,
    });
    Decision {
        outcome,
        state: next,
        changed,
        conflict,
        detail,
        custom: vec![],
    }
}

fn name(origin: &str) -> &str {
    if origin.is_empty() {
        "the hub"
    } else {
        origin
    }
}

fn join(cols: &[(String, bool)]) -> String {
    cols.iter()
        .map(|c| c.0.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prio() -> Priorities {
        let mut p = Priorities::default();
        for (n, v) in [("CRM", 1), ("ERP", 2), ("Portal", 3), ("LocalDB", 4)] {
            p.peers.insert(n.to_string(), v);
        }
        p
    }

    fn change(op: Op, version: i64, origin: &str, values: &[(&str, &str)]) -> Change {
        Change {
            op,
            version,
            origin: origin.into(),
            values: values
                .iter()
                .map(|(k, v)| (Text::from(*k), Text::from(*v)))
                .collect(),
            expect_version: None,
            ts: 0,
        }
    }

    fn run(changes: &[Change], p: &Priorities) -> (Option<KeyState>, Vec<Outcome>) {
        let mut st: Option<KeyState> = None;
        let mut outs = vec![];
        for c in changes {
            let d = resolve(st.as_ref(), c, p);
            outs.push(d.outcome);
            st = Some(d.state);
        }
        (st, outs)
    }

    fn val<'a>(s: &'a Option<KeyState>, col: &str) -> &'a str {
        &s.as_ref().unwrap().cells[col].value
    }

    // The acceptance table of issue #3.
    #[test]
    fn cust_001_same_version_overlap_is_won_by_the_better_priority() {
        let (s, o) = run(
            &[
                change(
                    Op::Insert,
                    1,
                    "ERP",
                    &[("full_name", r#""Erp Name""#), ("email", r#""e@x""#)],
                ),
                change(
                    Op::Insert,
                    1,
                    "CRM",
                    &[("full_name", r#""Crm Name""#), ("email", r#""e@x""#)],
                ),
            ],
            &prio(),
        );
        assert_eq!(o, vec![Outcome::NewRecord, Outcome::PriorityWin]);
        assert_eq!(val(&s, "full_name"), r#""Crm Name""#);
        assert_eq!(&*s.unwrap().origin, "CRM");
    }

    #[test]
    fn cust_002_an_older_version_is_skipped() {
        let (s, o) = run(
            &[
                change(Op::Insert, 2, "CRM", &[("full_name", r#""Crm""#)]),
                change(Op::Insert, 1, "Portal", &[("full_name", r#""Portal""#)]),
            ],
            &prio(),
        );
        assert_eq!(o, vec![Outcome::NewRecord, Outcome::StaleSkip]);
        assert_eq!(val(&s, "full_name"), r#""Crm""#);
    }

    #[test]
    fn cust_003_disjoint_columns_from_the_same_base_merge() {
        let base = change(
            Op::Insert,
            1,
            "LocalDB",
            &[
                ("id", "3"),
                ("full_name", r#""Old""#),
                ("email", r#""old@x""#),
            ],
        );
        // As sync_apply sends them: every change carries the key column.
        let (s, o) = run(
            &[
                base,
                change(
                    Op::Update,
                    2,
                    "CRM",
                    &[("id", "3"), ("full_name", r#""New""#)],
                ),
                change(
                    Op::Update,
                    2,
                    "ERP",
                    &[("id", "3"), ("email", r#""new@x""#)],
                ),
            ],
            &prio(),
        );
        assert_eq!(
            o,
            vec![Outcome::NewRecord, Outcome::VersionWin, Outcome::FieldMerge]
        );
        assert_eq!(val(&s, "full_name"), r#""New""#);
        assert_eq!(val(&s, "email"), r#""new@x""#);
        assert_eq!(&*s.unwrap().origin, "ERP");
    }

    #[test]
    fn cust_004_equal_version_and_priority_is_manual_with_an_order_free_interim() {
        let a = change(Op::Update, 5, "CRM", &[("email", r#""a""#)]);
        let b = change(Op::Update, 5, "CRM", &[("email", r#""b""#)]);
        let (s1, o1) = run(&[a.clone(), b.clone()], &prio());
        let (s2, o2) = run(&[b, a], &prio());
        assert_eq!(o1, vec![Outcome::NewRecord, Outcome::Manual]);
        assert_eq!(o2, vec![Outcome::NewRecord, Outcome::Manual]);
        assert_eq!(s1, s2, "the interim value does not depend on arrival order");
        assert_eq!(val(&s1, "email"), r#""b""#);
    }

    #[test]
    fn cust_005_a_first_write_is_a_new_record() {
        let (_, o) = run(
            &[change(Op::Insert, 1, "CRM", &[("full_name", r#""x""#)])],
            &prio(),
        );
        assert_eq!(o, vec![Outcome::NewRecord]);
    }

    #[test]
    fn a_redelivered_change_is_idempotent() {
        let c = change(Op::Update, 3, "ERP", &[("email", r#""x""#)]);
        let (s1, _) = run(std::slice::from_ref(&c), &prio());
        let d = resolve(s1.as_ref(), &c, &prio());
        assert_eq!(d.outcome, Outcome::StaleSkip);
        assert!(!d.changed);
    }

    #[test]
    fn a_stale_update_does_not_resurrect_a_deleted_row() {
        let (s, o) = run(
            &[
                change(Op::Insert, 1, "CRM", &[("a", "1")]),
                change(Op::Delete, 3, "CRM", &[]),
                change(Op::Update, 2, "ERP", &[("a", "2")]),
            ],
            &prio(),
        );
        assert_eq!(
            o,
            vec![Outcome::NewRecord, Outcome::VersionWin, Outcome::StaleSkip]
        );
        assert!(!s.unwrap().alive);
    }

    #[test]
    fn a_newer_update_brings_a_deleted_row_back_with_its_old_columns() {
        let (s, o) = run(
            &[
                change(Op::Insert, 1, "CRM", &[("a", "1"), ("b", "1")]),
                change(Op::Delete, 2, "CRM", &[]),
                change(Op::Update, 3, "ERP", &[("a", "3")]),
            ],
            &prio(),
        );
        assert_eq!(o[2], Outcome::VersionWin);
        let s = s.unwrap();
        assert!(s.alive);
        assert_eq!(&*s.cells["a"].value, "3");
        assert_eq!(&*s.cells["b"].value, "1");
    }

    #[test]
    fn a_delete_against_a_newer_update_is_stale_and_a_delete_of_nothing_is_recorded() {
        let (s, o) = run(
            &[
                change(Op::Insert, 1, "CRM", &[("a", "1")]),
                change(Op::Update, 3, "CRM", &[("a", "3")]),
                change(Op::Delete, 2, "ERP", &[]),
            ],
            &prio(),
        );
        assert_eq!(o[2], Outcome::StaleSkip);
        assert!(s.unwrap().alive);
        let (s, o) = run(
            &[
                change(Op::Delete, 2, "ERP", &[]),
                change(Op::Insert, 1, "CRM", &[("a", "1")]),
            ],
            &prio(),
        );
        assert_eq!(o, vec![Outcome::VersionWin, Outcome::StaleSkip]);
        assert!(
            !s.unwrap().alive,
            "an older insert does not undo a recorded delete"
        );
    }

    #[test]
    fn expect_version_applies_only_at_that_version() {
        let (s, _) = run(&[change(Op::Insert, 4, "CRM", &[("a", "1")])], &prio());
        let mut c = change(Op::Update, 2, "Portal", &[("a", "2")]);
        c.expect_version = Some(4);
        let d = resolve(s.as_ref(), &c, &prio());
        assert_eq!(d.outcome, Outcome::VersionWin);
        assert_eq!(d.state.version, 5);
        assert_eq!(&*d.state.cells["a"].value, "2");
        c.expect_version = Some(3);
        let d = resolve(s.as_ref(), &c, &prio());
        assert_eq!(
            d.outcome,
            Outcome::StaleSkip,
            "a failed ETag goes through the ladder"
        );
    }

    /// A small deterministic generator, so failures replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_change(r: &mut Rng) -> Change {
        let origins = ["CRM", "ERP", "Portal"];
        let op = match r.below(6) {
            0 => Op::Delete,
            1 => Op::Insert,
            _ => Op::Update,
        };
        let mut values = BTreeMap::new();
        if op != Op::Delete {
            // sync_apply always sets the key columns of an insert or update.
            values.insert(Text::from("id"), Text::from("1"));
            for col in ["a", "b", "c"] {
                if op == Op::Insert || r.below(2) == 0 {
                    values.insert(Text::from(col), Text::from(format!("\"v{}\"", r.below(3))));
                }
            }
        }
        Change {
            op,
            version: 1 + r.below(4) as i64,
            origin: origins[r.below(3) as usize].into(),
            values,
            expect_version: None,
            ts: r.below(3) as i64,
        }
    }

    /// The convergence property: random changes from 3 peers (with equal and
    /// unequal priorities, and on last-writer-wins tables), applied in random
    /// permutations, give the same final state.
    #[test]
    fn any_arrival_order_converges_to_the_same_state() {
        let lww = Priorities {
            policy: Policy::LastWriterWins,
            ..prio()
        };
        for (trial, priorities) in [prio(), Priorities::default(), lww]
            .iter()
            .cycle()
            .take(3000)
            .enumerate()
        {
            let mut r = Rng(0x9e3779b97f4a7c15 ^ (trial as u64 + 1));
            let n = 2 + r.below(6) as usize;
            let changes: Vec<Change> = (0..n).map(|_| random_change(&mut r)).collect();
            let (reference, _) = run(&changes, priorities);
            for _ in 0..6 {
                let mut perm = changes.clone();
                for i in (1..perm.len()).rev() {
                    perm.swap(i, r.below(i as u64 + 1) as usize);
                }
                let (got, _) = run(&perm, priorities);
                let (a, b) = (reference.as_ref().unwrap(), got.as_ref().unwrap());
                assert_eq!(
                    a.alive, b.alive,
                    "trial {trial}: existence differs\n{changes:?}\n{perm:?}\n{a:?}\n{b:?}"
                );
                assert_eq!(
                    a.cells, b.cells,
                    "trial {trial}: columns differ\n{changes:#?}\n{perm:#?}"
                );
                assert_eq!(a.deleted, b.deleted, "trial {trial}: delete stamp differs");
                if a.alive {
                    assert_eq!(
                        a.version, b.version,
                        "trial {trial}: row version differs\n{changes:?}\n{perm:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn last_writer_wins_decides_same_revision_overlaps_by_the_clock() {
        let p = Priorities {
            policy: Policy::LastWriterWins,
            ..prio()
        };
        let mut early = change(Op::Update, 2, "CRM", &[("id", "1"), ("email", r#""crm""#)]);
        early.ts = 100;
        let mut late = change(
            Op::Update,
            2,
            "Portal",
            &[("id", "1"), ("email", r#""portal""#)],
        );
        late.ts = 200;
        for order in [[early.clone(), late.clone()], [late.clone(), early.clone()]] {
            let (s, o) = run(&order, &p);
            assert_eq!(
                val(&s, "email"),
                r#""portal""#,
                "the later clock wins whatever the priority"
            );
            assert_eq!(o[1], Outcome::LastWriterWins);
        }
    }

    #[test]
    fn hub_wins_and_peer_wins_keep_or_take_at_the_same_revision() {
        let first = change(
            Op::Update,
            2,
            "CRM",
            &[("id", "1"), ("email", r#""first""#)],
        );
        let second = change(
            Op::Update,
            2,
            "Portal",
            &[("id", "1"), ("email", r#""second""#)],
        );
        let hub = Priorities {
            policy: Policy::HubWins,
            ..prio()
        };
        let (s, o) = run(&[first.clone(), second.clone()], &hub);
        assert_eq!((val(&s, "email"), o[1]), (r#""first""#, Outcome::HubWins));
        let peer = Priorities {
            policy: Policy::PeerWins,
            ..prio()
        };
        let (s, o) = run(&[first, second], &peer);
        assert_eq!((val(&s, "email"), o[1]), (r#""second""#, Outcome::PeerWins));
    }

    #[test]
    fn the_custom_policy_keeps_the_hub_value_and_names_the_columns_to_merge() {
        let p = Priorities {
            policy: Policy::Custom,
            ..prio()
        };
        let first = change(
            Op::Update,
            2,
            "CRM",
            &[("id", "1"), ("email", r#""a""#), ("name", r#""n""#)],
        );
        let second = change(
            Op::Update,
            2,
            "Portal",
            &[("id", "1"), ("email", r#""b""#), ("name", r#""n""#)],
        );
        let (s, _) = run(&[first], &p);
        let d = resolve(s.as_ref(), &second, &p);
        assert_eq!(d.outcome, Outcome::Custom);
        assert_eq!(
            d.custom,
            vec!["email"],
            "only the real overlap goes to the function"
        );
        assert_eq!(&*d.state.cells["email"].value, r#""a""#);
    }
}
