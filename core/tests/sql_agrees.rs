//! The SQL files spell the tracking columns, the policies, the outcomes and
//! the origin limit too. These tests fail when a spelling there disagrees
//! with `tributary-core`, where each is defined once.

use std::path::PathBuf;
use tributary_core::resolver::{Outcome, Policy};
use tributary_core::tracking;

fn sql_files() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "the SQL files were not found");
    out
}

/// The quoted words of a list, from `(`…`)`, `{`…`}` or `[`…`]` starting at `at`.
fn list_at(text: &str, at: usize) -> Vec<String> {
    let open = text[at..].find(['(', '{', '[']).unwrap() + at;
    let close = match text.as_bytes()[open] {
        b'(' => ')',
        b'{' => '}',
        _ => ']',
    };
    let end = text[open..].find(close).unwrap() + open;
    text[open + 1..end]
        .split(',')
        .map(|w| w.trim().trim_matches('\'').to_string())
        .collect()
}

#[test]
fn every_list_of_tracking_columns_is_the_core_list() {
    let want: Vec<String> = tracking::COLUMNS.iter().map(|s| s.to_string()).collect();
    let mut seen = 0;
    for (file, text) in sql_files() {
        // `'{sync_version,…}'` arrays and `IN ('sync_version', …)` lists.
        for (at, _) in text.match_indices("{sync_version") {
            assert_eq!(list_at(&text, at), want, "{file}: an array literal");
            seen += 1;
        }
        for (at, _) in text.match_indices("IN ('sync_version'") {
            assert_eq!(list_at(&text, at), want, "{file}: an IN list");
            seen += 1;
        }
        for (at, _) in text.match_indices("ARRAY['sync_version'") {
            assert_eq!(list_at(&text, at), want, "{file}: an ARRAY list");
            seen += 1;
        }
        // The reserved-column check names each column with its type.
        if let Some(at) = text.find("(VALUES ('sync_version'") {
            let body = &text[at..at + text[at..].find("AS w(").unwrap()];
            let names: Vec<String> = body
                .match_indices("('")
                .map(|(i, _)| body[i + 2..].split('\'').next().unwrap().to_string())
                .collect();
            assert_eq!(names, want, "{file}: the reserved columns");
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected the tracking column lists, found {seen}"
    );
}

#[test]
fn every_policy_list_is_the_core_list() {
    let want: Vec<String> = Policy::ALL.iter().map(|p| p.as_str().to_string()).collect();
    let mut seen = 0;
    for (file, text) in sql_files() {
        for (at, _) in text.match_indices("IN ('ladder'") {
            assert_eq!(list_at(&text, at), want, "{file}: a policy list");
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the CHECK and sync_set_policy's list");
}

#[test]
fn every_outcome_the_sql_names_is_a_core_outcome() {
    // The SQL names none since 0.5.0 (the parked changes' replay is Rust
    // and spells them through Outcome); one it names must be a core one.
    for (file, text) in sql_files() {
        for word in [
            "'DEFERRED'",
            "'DEAD_LETTER'",
            "'MANUAL'",
            "'STALE_SKIP'",
            "'NEW_RECORD'",
        ] {
            if text.contains(word) {
                assert!(
                    Outcome::parse(word.trim_matches('\'')).is_some(),
                    "{file}: {word}"
                );
            }
        }
    }
    for o in Outcome::ALL {
        assert_eq!(Outcome::parse(o.as_str()), Some(o));
    }
}

#[test]
fn the_origin_limit_in_sql_is_the_core_limit() {
    let mut seen = 0;
    for (file, text) in sql_files() {
        for (at, _) in text.match_indices("octet_length(") {
            let rest = &text[at..];
            let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
            if let Some(gt) = line.find(") > ") {
                let n: usize = line[gt + 4..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(n, tracking::MAX_ORIGIN_BYTES, "{file}: {line}");
                seen += 1;
            }
        }
        for (at, _) in text.match_indices("at most ") {
            let n = text[at + 8..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap();
            if let Ok(n) = n.parse::<usize>() {
                assert_eq!(n, tracking::MAX_ORIGIN_BYTES, "{file}: 'at most {n}'");
                seen += 1;
            }
        }
    }
    assert!(seen >= 1, "expected sync_set_peer's length check");
}
