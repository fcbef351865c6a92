//! JSON text building blocks for the row serializer: string escaping and
//! the non-finite numbers JSON cannot carry.
//!
//! Pure logic, no pgrx, tested with `#[test]`.

/// Appends `s` (bytes in the server encoding, which is always ASCII-safe)
/// as a quoted JSON string. Runs that need no escaping are copied at once.
pub fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
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
        out.extend_from_slice(&s[run..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
}

/// Appends a number as PostgreSQL printed it. NaN and the infinities are
/// not JSON numbers: like `to_json`, they become strings.
pub fn push_number(out: &mut Vec<u8>, printed: &[u8]) {
    match printed {
        b"NaN" | b"Infinity" | b"-Infinity" => push_string(out, printed),
        n => out.extend_from_slice(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
