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

#[cfg(test)]
mod tests {
    use super::*;

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
