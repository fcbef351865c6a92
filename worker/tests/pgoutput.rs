//! The pgoutput decoder: round trips of arbitrary messages, arbitrary and
//! truncated input, and the details that matter downstream.

use proptest::prelude::*;
use tributary_worker::lsn::Lsn;
use tributary_worker::pgoutput::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z_\"'\\]]{0,12}".prop_map(|s| s)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    proptest::collection::vec(value(), 0..8).prop_map(Tuple)
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

/// Messages that may appear inside a stream (they carry the xid there).
fn change() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u32>(),
            name(),
            name(),
            any::<u8>(),
            proptest::collection::vec((any::<bool>(), name(), any::<u32>(), any::<i32>()), 0..6)
        )
            .prop_map(
                |(id, namespace, name, replica_identity, cols)| Message::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns: cols
                        .into_iter()
                        .map(|(key, name, type_oid, type_modifier)| Column {
                            key,
                            name,
                            type_oid,
                            type_modifier
                        })
                        .collect(),
                })
            ),
        (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| Message::Type {
            id,
            namespace,
            name
        }),
        (any::<u32>(), tuple()).prop_map(|(relation, new)| Message::Insert { relation, new }),
        (
            any::<u32>(),
            proptest::option::of(tuple()),
            tuple(),
            any::<bool>()
        )
            .prop_map(|(relation, t, new, full)| {
                let (key, old) = if full { (None, t) } else { (t, None) };
                Message::Update {
                    relation,
                    key,
                    old,
                    new,
                }
            }),
        (any::<u32>(), tuple(), any::<bool>()).prop_map(|(relation, t, full)| {
            if full {
                Message::Delete {
                    relation,
                    key: None,
                    old: Some(t),
                }
            } else {
                Message::Delete {
                    relation,
                    key: Some(t),
                    old: None,
                }
            }
        }),
        (
            proptest::collection::vec(any::<u32>(), 0..5),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(relations, cascade, restart_identity)| Message::Truncate {
                relations,
                cascade,
                restart_identity
            }),
        (
            any::<bool>(),
            lsn(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..30)
        )
            .prop_map(|(transactional, lsn, prefix, content)| Message::Message {
                transactional,
                lsn,
                prefix,
                content
            }),
    ]
}

fn control() -> impl Strategy<Value = Message> {
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            }
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            }
        ),
        (lsn(), name()).prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
        (any::<u32>(), any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(xid, flags, commit_lsn, end_lsn, commit_time)| {
                Message::StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                }
            }
        ),
        (any::<u32>(), any::<u32>())
            .prop_map(|(xid, subxact)| Message::StreamAbort { xid, subxact }),
    ]
}

proptest! {
    #[test]
    fn any_message_outside_a_stream_round_trips(m in prop_oneof![change(), control()]) {
        let d = Decoded { xid: None, message: m };
        prop_assert_eq!(Decoder::new().decode(&encode(&d)).unwrap(), d);
    }

    #[test]
    fn changes_inside_a_stream_carry_their_xid(xid in any::<u32>(), changes in proptest::collection::vec(change(), 1..6)) {
        let mut dec = Decoder::new();
        let start = Decoded { xid: None, message: Message::StreamStart { xid, first_segment: true } };
        prop_assert_eq!(dec.decode(&encode(&start)).unwrap(), start);
        prop_assert!(dec.in_stream());
        for c in changes {
            let d = Decoded { xid: Some(xid), message: c };
            prop_assert_eq!(dec.decode(&encode(&d)).unwrap(), d);
        }
        let stop = Decoded { xid: None, message: Message::StreamStop };
        prop_assert_eq!(dec.decode(&encode(&stop)).unwrap(), stop);
        prop_assert!(!dec.in_stream());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), in_stream in any::<bool>()) {
        let mut dec = Decoder::new();
        if in_stream {
            dec.decode(&encode(&Decoded { xid: None, message: Message::StreamStart { xid: 1, first_segment: false } })).unwrap();
        }
        let _ = dec.decode(&bytes);
    }

    #[test]
    fn every_truncation_is_an_error(m in prop_oneof![change(), control()]) {
        let bytes = encode(&Decoded { xid: None, message: m });
        for cut in 0..bytes.len() {
            prop_assert!(Decoder::new().decode(&bytes[..cut]).is_err(), "prefix of {} bytes accepted", cut);
        }
    }
}

#[test]
fn unchanged_toast_is_not_null() {
    let bytes = [
        b'I', 0, 0, 0, 7, b'N', 0, 3, b'n', b'u', b't', 0, 0, 0, 2, b'h', b'i',
    ];
    let d = Decoder::new().decode(&bytes).unwrap();
    assert_eq!(
        d.message,
        Message::Insert {
            relation: 7,
            new: Tuple(vec![
                Value::Null,
                Value::UnchangedToast,
                Value::Text(b"hi".to_vec())
            ])
        }
    );
}

#[test]
fn malformed_input_is_reported_with_its_place() {
    assert_eq!(Decoder::new().decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        Decoder::new().decode(b"Z"),
        Err(DecodeError::UnknownTag(b'Z'))
    );
    let e = Decoder::new()
        .decode(&[b'I', 0, 0, 0, 7, b'N', 0, 1, b't', 0, 0, 0, 9, b'x'])
        .unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::Truncated {
                tag: 'I',
                needed: 8,
                ..
            }
        ),
        "{e:?}"
    );
    let e = Decoder::new()
        .decode(&[b'I', 0, 0, 0, 7, b'X'])
        .unwrap_err();
    assert!(e.to_string().contains("expected 'N'"), "{e}");
    let e = Decoder::new().decode(&[b'E', 1]).unwrap_err();
    assert!(e.to_string().contains("trailing"), "{e}");
}
