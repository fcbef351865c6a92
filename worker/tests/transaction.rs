//! Transaction assembly on encoded pgoutput: what reaches the router for
//! plain and streamed transactions, aborts, subtransaction aborts, key
//! changes, unchanged TOAST and origins.

use tributary_worker::lsn::Lsn;
use tributary_worker::pgoutput::*;
use tributary_worker::transaction::{Assembler, Item, Op, ORIGIN_MESSAGE};

fn relation() -> Message {
    let col = |name: &str, key: bool, type_oid: u32| Column {
        key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Message::Relation(Relation {
        id: 7,
        namespace: "public".into(),
        name: "tab'le".into(),
        replica_identity: b'd',
        columns: vec![
            col("id", true, 23),
            col("big", false, 25),
            col("sync_version", false, 20),
            col("sync_origin", false, 25),
        ],
    })
}

fn t(s: &str) -> Value {
    Value::Text(s.as_bytes().to_vec())
}

fn row(id: &str, big: Value, origin: Value) -> Tuple {
    Tuple(vec![t(id), big, t("3"), origin])
}

/// (op, pk, data, origin, unchanged) of each change, plus B/C markers.
#[derive(Debug, PartialEq)]
enum Seen {
    B(Lsn),
    Ch(Op, String, Option<String>, Option<String>, Vec<String>, u32),
    C(Lsn),
}

fn feed(a: &mut Assembler, msgs: Vec<(Option<u32>, Message)>) -> Vec<Seen> {
    let mut seen = Vec::new();
    let push = |i: Item, seen: &mut Vec<Seen>| {
        seen.push(match i {
            Item::Begin { commit_lsn, .. } => Seen::B(commit_lsn),
            Item::Commit { end_lsn, .. } => Seen::C(end_lsn),
            Item::Change(c) => Seen::Ch(
                c.op,
                c.pk_json().unwrap_or_default(),
                c.data_json(),
                c.origin.clone(),
                c.unchanged().into_iter().map(String::from).collect(),
                c.ord,
            ),
        })
    };
    for (xid, message) in msgs {
        let bytes = encode(&Decoded { xid, message });
        let mut out = Vec::new();
        let replay = a.feed(&bytes, &mut out).unwrap();
        for i in out {
            push(i, &mut seen);
        }
        if let Some(mut r) = replay {
            while let Some(i) = r.next(a).unwrap() {
                push(i, &mut seen);
            }
        }
    }
    seen
}

fn begin(lsn: u64) -> (Option<u32>, Message) {
    (
        None,
        Message::Begin {
            final_lsn: Lsn(lsn),
            commit_time: 0,
            xid: 1,
        },
    )
}

fn commit(lsn: u64) -> (Option<u32>, Message) {
    (
        None,
        Message::Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_time: 0,
        },
    )
}

#[test]
fn a_plain_transaction_flows_through_with_toast_left_out_and_origins() {
    let mut a = Assembler::new(std::env::temp_dir());
    let seen = feed(
        &mut a,
        vec![
            begin(100),
            (None, relation()),
            (
                None,
                Message::Insert {
                    relation: 7,
                    new: row("1", t("x\"y"), Value::Null),
                },
            ),
            (
                None,
                Message::Update {
                    relation: 7,
                    key: None,
                    old: None,
                    new: row("1", Value::UnchangedToast, t("crm")),
                },
            ),
            // A key change: the old key goes first.
            (
                None,
                Message::Update {
                    relation: 7,
                    key: Some(Tuple(vec![t("1"), Value::Null, Value::Null, Value::Null])),
                    old: None,
                    new: row("2", Value::UnchangedToast, Value::Null),
                },
            ),
            (
                None,
                Message::Message {
                    transactional: true,
                    lsn: Lsn(0),
                    prefix: ORIGIN_MESSAGE.into(),
                    content: b"erp".to_vec(),
                },
            ),
            (
                None,
                Message::Delete {
                    relation: 7,
                    key: Some(Tuple(vec![t("2"), Value::Null, Value::Null, Value::Null])),
                    old: None,
                },
            ),
            (
                None,
                Message::Message {
                    transactional: true,
                    lsn: Lsn(0),
                    prefix: ORIGIN_MESSAGE.into(),
                    content: vec![],
                },
            ),
            (
                None,
                Message::Truncate {
                    relations: vec![7],
                    cascade: false,
                    restart_identity: false,
                },
            ),
            commit(100),
        ],
    );
    let crm = Some("crm".to_string());
    assert_eq!(
        seen,
        vec![
            Seen::B(Lsn(100)),
            Seen::Ch(
                Op::Insert,
                r#"{"id":1}"#.into(),
                Some(r#"{"id":1,"big":"x\"y"}"#.into()),
                None,
                vec![],
                0
            ),
            Seen::Ch(
                Op::Update,
                r#"{"id":1}"#.into(),
                Some(r#"{"id":1}"#.into()),
                crm,
                vec!["big".into()],
                1
            ),
            Seen::Ch(Op::Delete, r#"{"id":1}"#.into(), None, None, vec![], 2),
            Seen::Ch(
                Op::Update,
                r#"{"id":2}"#.into(),
                Some(r#"{"id":2}"#.into()),
                None,
                vec!["big".into()],
                3
            ),
            Seen::Ch(
                Op::Delete,
                r#"{"id":2}"#.into(),
                None,
                Some("erp".into()),
                vec![],
                4
            ),
            Seen::Ch(Op::Truncate, String::new(), None, None, vec![], 5),
            Seen::C(Lsn(108)),
        ]
    );
    assert!(a.idle());
}

#[test]
fn streamed_transactions_replay_on_commit_and_aborts_reach_no_one() {
    let mut a = Assembler::new(std::env::temp_dir());
    feed(&mut a, vec![begin(10), (None, relation()), commit(10)]);
    let ins = |id: &str| Message::Insert {
        relation: 7,
        new: row(id, t("v"), Value::Null),
    };
    let seen = feed(
        &mut a,
        vec![
            (
                None,
                Message::StreamStart {
                    xid: 50,
                    first_segment: true,
                },
            ),
            (Some(50), ins("1")),
            (Some(51), ins("2")), // a subtransaction, rolled back below
            (None, Message::StreamStop),
            (
                None,
                Message::StreamStart {
                    xid: 60,
                    first_segment: true,
                },
            ),
            (Some(60), ins("9")),
            (None, Message::StreamStop),
            (
                None,
                Message::StreamAbort {
                    xid: 50,
                    subxact: 51,
                },
            ),
            (
                None,
                Message::StreamStart {
                    xid: 50,
                    first_segment: false,
                },
            ),
            (Some(50), ins("3")),
            (None, Message::StreamStop),
            // The other stream aborts whole.
            (
                None,
                Message::StreamAbort {
                    xid: 60,
                    subxact: 60,
                },
            ),
        ],
    );
    assert_eq!(seen, vec![], "nothing before the commit");
    assert!(!a.idle(), "a stream is open");
    let seen = feed(
        &mut a,
        vec![(
            None,
            Message::StreamCommit {
                xid: 50,
                flags: 0,
                commit_lsn: Lsn(500),
                end_lsn: Lsn(508),
                commit_time: 0,
            },
        )],
    );
    let ids: Vec<String> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Ch(_, pk, ..) => Some(pk.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [r#"{"id":1}"#, r#"{"id":3}"#]);
    assert_eq!(seen.first(), Some(&Seen::B(Lsn(500))));
    assert_eq!(seen.last(), Some(&Seen::C(Lsn(508))));
    assert!(a.idle());
}

#[test]
fn protocol_violations_are_errors_not_panics() {
    let mut a = Assembler::new(std::env::temp_dir());
    let mut out = Vec::new();
    // A change before its Relation message.
    a.feed(
        &encode(&Decoded {
            xid: None,
            message: begin(1).1,
        }),
        &mut out,
    )
    .unwrap();
    let e = a
        .feed(
            &encode(&Decoded {
                xid: None,
                message: Message::Insert {
                    relation: 99,
                    new: Tuple(vec![]),
                },
            }),
            &mut out,
        )
        .err()
        .expect("an error");
    assert!(e.to_string().contains("relation 99"), "{e}");
    // A commit of a stream never started; a later segment without a first.
    let mut a = Assembler::new(std::env::temp_dir());
    let sc = Message::StreamCommit {
        xid: 5,
        flags: 0,
        commit_lsn: Lsn(1),
        end_lsn: Lsn(2),
        commit_time: 0,
    };
    assert!(a
        .feed(
            &encode(&Decoded {
                xid: None,
                message: sc
            }),
            &mut out
        )
        .is_err());
    let ss = Message::StreamStart {
        xid: 5,
        first_segment: false,
    };
    assert!(a
        .feed(
            &encode(&Decoded {
                xid: None,
                message: ss
            }),
            &mut out
        )
        .is_err());
    // Garbage.
    assert!(a.feed(b"Zgarbage", &mut out).is_err());
}
