//! Quoting for SQL text built at run time. Values are always bound as
//! parameters; only names (and, where a statement cannot take parameters,
//! a literal) are quoted here.

/// A PostgreSQL or SQLite identifier: `"…"` with `"` doubled.
pub fn ident(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A PostgreSQL or SQLite string literal: `'…'` with `'` doubled. (The
/// hub runs with `standard_conforming_strings`, so a backslash is plain.)
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A schema-qualified PostgreSQL name.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// The inverse of [`qualified`]: `"schema"."name"`, each part quoted with
/// `"` doubled, and nothing else. None for any other text, so a name read
/// from an untrusted place (a peer's file) is either exactly one table's
/// name or refused, never parsed leniently.
pub fn parse_qualified(s: &str) -> Option<(String, String)> {
    fn part(s: &str) -> Option<(String, &str)> {
        let mut rest = s.strip_prefix('"')?;
        let mut out = String::new();
        loop {
            let i = rest.find('"')?;
            out.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            match rest.strip_prefix('"') {
                Some(more) => {
                    out.push('"');
                    rest = more;
                }
                None => return Some((out, rest)),
            }
        }
    }
    let (schema, rest) = part(s)?;
    let (name, rest) = part(rest.strip_prefix('.')?)?;
    (rest.is_empty() && !schema.is_empty() && !name.is_empty()).then_some((schema, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qualified_name_parses_back_and_nothing_else_does() {
        for (s, n) in [
            ("public", "items"),
            ("s\"", "tab'le"),
            ("a.b", "]"),
            ("\"\"", "x y"),
        ] {
            assert_eq!(
                parse_qualified(&qualified(s, n)),
                Some((s.to_string(), n.to_string()))
            );
        }
        for bad in [
            "items",
            "public.items",
            "\"public\".items",
            "\"public\".\"items\"; DROP TABLE x",
            "\"public\".\"items\" ",
            "\"pub\"lic\".\"items\"",
            "\"\".\"items\"",
            "\"public\".\"it",
            "",
        ] {
            assert_eq!(parse_qualified(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostile_names_are_quoted() {
        assert_eq!(ident("tab'le"), "\"tab'le\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("]"), "\"]\"");
        assert_eq!(literal("tab'le"), "'tab''le'");
        assert_eq!(literal("\\"), "'\\'");
        assert_eq!(qualified("s\"", "t"), "\"s\"\"\".\"t\"");
    }
}
