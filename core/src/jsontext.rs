//! JSON text building blocks, shared by the extension's row serializer,
//! the worker's change JSON and the peers' keys: string escaping, the
//! non-finite numbers JSON cannot carry, and splitting an object's text.
//!
//! Pure logic, tested with `#[test]`.

use std::borrow::Cow;

/// Appends `s` (bytes in the server encoding, which is always ASCII-safe)
/// as a quoted JSON string. Runs that need no escaping are copied at once.
pub fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    escape(s, |part| out.extend_from_slice(part));
}

/// [`push_string`] into a `String`: the same escapes.
pub fn push_str(out: &mut String, s: &str) {
    // Every part is either a run of `s` cut at ASCII bytes (char
    // boundaries) or an ASCII escape, so it is valid UTF-8.
    escape(s.as_bytes(), |part| {
        out.push_str(std::str::from_utf8(part).unwrap_or_default())
    });
}

/// Hands `put` the quoted, escaped JSON string of `s`, in parts.
fn escape(s: &[u8], mut put: impl FnMut(&[u8])) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    put(b"\"");
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        put(&s[run..i]);
        if esc.is_empty() {
            put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            put(esc);
        }
        run = i + 1;
    }
    put(&s[run..]);
    put(b"\"");
}

/// Appends a number as PostgreSQL printed it. NaN and the infinities are
/// not JSON numbers: like `to_json`, they become strings.
pub fn push_number(out: &mut Vec<u8>, printed: &[u8]) {
    match printed {
        b"NaN" | b"Infinity" | b"-Infinity" => push_string(out, printed),
        n => out.extend_from_slice(n),
    }
}

/// Splits a JSON object's text into its members: the unescaped key and the
/// value's exact text. Used on text PostgreSQL produced (`row_json`,
/// `jsonb::text`), so it only needs to find boundaries, not validate.
pub fn split_object(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let (key, next) = read_key(text, i)?;
        i = skip_ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        out.push((key, &text[i..end]));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// A key: borrowed from the text when it has no escapes (column names
/// rarely do), else unescaped.
fn read_key(text: &str, i: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let end = i + 1 + b[i + 1..].iter().position(|c| matches!(c, b'"' | b'\\'))?;
    if b[end] == b'"' {
        return Some((Cow::Borrowed(&text[i + 1..end]), end + 1));
    }
    read_string(text, i).map(|(s, n)| (Cow::Owned(s), n))
}

/// The contents of a JSON string's text (`"a\"b"` -> `a"b`).
pub fn unquote(text: &str) -> Option<String> {
    read_string(text, 0).map(|(s, _)| s)
}

/// Appends the contents of a JSON string's text: copied as it is when it
/// has no escapes.
pub fn unquote_into(text: &str, out: &mut Vec<u8>) {
    let b = text.as_bytes();
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' && !b.contains(&b'\\') {
        out.extend_from_slice(&b[1..b.len() - 1]);
    } else if let Some(s) = unquote(text) {
        out.extend_from_slice(s.as_bytes());
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Reads a JSON string starting at `i` (the opening quote); returns it
/// unescaped and the index after the closing quote.
fn read_string(text: &str, i: usize) -> Option<(String, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut out = String::new();
    let mut j = i + 1;
    let mut run = j;
    while j < b.len() {
        match b[j] {
            b'"' => {
                out.push_str(&text[run..j]);
                return Some((out, j + 1));
            }
            b'\\' => {
                out.push_str(&text[run..j]);
                let e = *b.get(j + 1)?;
                j += 2;
                match e {
                    b'n' => out.push('\n'),
                    b't' => out.push('\t'),
                    b'r' => out.push('\r'),
                    b'b' => out.push('\u{08}'),
                    b'f' => out.push('\u{0c}'),
                    b'u' => {
                        let hi = u32::from_str_radix(text.get(j..j + 4)?, 16).ok()?;
                        j += 4;
                        let c = if (0xd800..0xdc00).contains(&hi)
                            && text.get(j..j + 2) == Some("\\u")
                        {
                            let lo = u32::from_str_radix(text.get(j + 2..j + 6)?, 16).ok()?;
                            j += 6;
                            char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))?
                        } else {
                            char::from_u32(hi)?
                        };
                        out.push(c);
                    }
                    other => out.push(other as char),
                }
                run = j;
            }
            _ => j += 1,
        }
    }
    None
}

/// The index after the JSON value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = value_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_str_escapes_as_push_string_does() {
        for s in ["plain", "tab'le\"]", "a\u{1}b\u{8}c\u{c}\n\r\t\\", "é日本"] {
            let mut a = String::new();
            push_str(&mut a, s);
            let mut b = Vec::new();
            push_string(&mut b, s.as_bytes());
            assert_eq!(a.as_bytes(), &b[..], "{s:?}");
        }
    }

    fn s(x: &str) -> String {
        let mut o = Vec::new();
        push_string(&mut o, x.as_bytes());
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn strings_are_escaped_for_json() {
        assert_eq!(s("plain"), r#""plain""#);
        assert_eq!(s(r#"tab'le "q" \ ]"#), r#""tab'le \"q\" \\ ]""#);
        assert_eq!(s("a\nb\tc\r\u{08}\u{0c}"), r#""a\nb\tc\r\b\f""#);
        assert_eq!(s("\u{01}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(s("é✓"), "\"é✓\"");
    }

    #[test]
    fn escaped_strings_parse_back() {
        for x in ["", "\"", "\\", "\u{0}", "\u{7f}", "line\nbreak", "]", "😀"] {
            let parsed: String = serde_json_like_parse(&s(x));
            assert_eq!(parsed, x);
        }
    }

    /// A tiny JSON string parser, enough to check the escaper round-trips.
    fn serde_json_like_parse(q: &str) -> String {
        let inner = &q[1..q.len() - 1];
        let mut out = String::new();
        let mut it = inner.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next().unwrap() {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{08}'),
                'f' => out.push('\u{0c}'),
                'u' => {
                    let h: String = it.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap());
                }
                o => out.push(o),
            }
        }
        out
    }

    #[test]
    fn non_finite_numbers_become_strings() {
        let mut o = Vec::new();
        push_number(&mut o, b"1.50");
        o.push(b',');
        push_number(&mut o, b"NaN");
        o.push(b',');
        push_number(&mut o, b"-Infinity");
        assert_eq!(o, br#"1.50,"NaN","-Infinity""#);
    }

    #[test]
    fn objects_split_into_exact_value_texts() {
        let text = r#"{"id": 1, "q\"t": "a\"b\\c", "n": 1.50, "j": {"k": [1, "x]"]}, "arr": [1,null], "z": null, "t": true}"#;
        let got: Vec<(String, &str)> = split_object(text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v))
            .collect();
        let want: Vec<(String, &str)> = vec![
            ("id".into(), "1"),
            ("q\"t".into(), r#""a\"b\\c""#),
            ("n".into(), "1.50"),
            ("j".into(), r#"{"k": [1, "x]"]}"#),
            ("arr".into(), "[1,null]"),
            ("z".into(), "null"),
            ("t".into(), "true"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn strings_unquote_with_and_without_escapes() {
        let mut out = Vec::new();
        unquote_into(r#""plain""#, &mut out);
        unquote_into(r#""a\"b\n""#, &mut out);
        assert_eq!(out, b"plaina\"b\n");
    }

    #[test]
    fn keys_are_unescaped_including_surrogate_pairs() {
        let got = split_object(r#"{"]": 1, "a\u00e9\ud83d\ude00\n": 2}"#).unwrap();
        assert_eq!(got[0].0, "]");
        assert_eq!(got[1].0, "a\u{e9}\u{1f600}\n");
        assert_eq!(split_object("{}").unwrap(), vec![]);
        assert_eq!(split_object("[1]"), None);
        assert_eq!(split_object(r#"{"a": "unterminated}"#), None);
    }
}
