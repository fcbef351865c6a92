//! A row filter's text, checked before PostgreSQL parses it.
//!
//! ```text
//!  sync_set_filter(tbl, text) ──> check_text ──> probe view (the expression, as the caller)
//!                                    │              └─> its columns (pg_depend)
//!                                    └─ 22023: not one expression
//! ```
//!
//! A filter is spliced into the hub's own queries as `(<filter>)`, so it
//! must be one expression: no statement separator, no comment that could
//! hide the rest of a query, and parentheses that never close more than
//! they opened (outside quotes), so that it cannot close the parenthesis it
//! is put in. Pure logic, tested with `#[test]`; `crate::api::filter` raises.

/// Why a filter's text is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadFilter {
    /// It contains `;`, `--` or `/*`.
    Token(&'static str),
    /// A `)` closes a parenthesis it did not open, or one stays open, or a
    /// quote is not closed.
    Unbalanced,
}

impl std::fmt::Display for BadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadFilter::Token(t) => write!(f, "it contains {t}"),
            BadFilter::Unbalanced => {
                write!(f, "its parentheses or quotes do not pair up")
            }
        }
    }
}

/// The tokens a filter may not contain, anywhere (even in a literal).
pub const REFUSED: [&str; 3] = [";", "--", "/*"];

/// Checks that `text` can only be one parenthesized expression.
pub fn check_text(text: &str) -> Result<(), BadFilter> {
    if let Some(t) = REFUSED.iter().find(|t| text.contains(**t)) {
        return Err(BadFilter::Token(t));
    }
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        i = match b[i] {
            b'(' => {
                depth += 1;
                i + 1
            }
            b')' => {
                depth = depth.checked_sub(1).ok_or(BadFilter::Unbalanced)?;
                i + 1
            }
            b'\'' => {
                let escapes = i > 0 && matches!(b[i - 1], b'E' | b'e') && !ident_before(b, i - 1);
                skip_quoted(b, i, b'\'', escapes)?
            }
            b'"' => skip_quoted(b, i, b'"', false)?,
            b'$' => skip_dollar(b, i)?,
            _ => i + 1,
        };
    }
    if depth == 0 {
        Ok(())
    } else {
        Err(BadFilter::Unbalanced)
    }
}

/// Whether the byte before `at` continues an identifier (so `xE'..'` is
/// not an escape string).
fn ident_before(b: &[u8], at: usize) -> bool {
    at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] >= 0x80)
}

/// The index after a quoted string or identifier starting at `start`
/// (`q` doubled is itself; with `escapes`, a backslash escapes a byte).
fn skip_quoted(b: &[u8], start: usize, q: u8, escapes: bool) -> Result<usize, BadFilter> {
    let mut i = start + 1;
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return Ok(i + 1);
            }
        } else {
            i += 1;
        }
    }
    Err(BadFilter::Unbalanced)
}

/// The index after a dollar-quoted string starting at `start` (`$tag$ …
/// $tag$`); a `$` that opens none (a parameter, `$1`) is one byte.
fn skip_dollar(b: &[u8], start: usize) -> Result<usize, BadFilter> {
    let tag_end = b[start + 1..]
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80))
        .map(|n| start + 1 + n);
    let Some(end) = tag_end.filter(|e| b[*e] == b'$') else {
        return Ok(start + 1);
    };
    if b.get(start + 1).is_some_and(|c| c.is_ascii_digit()) {
        return Ok(start + 1);
    }
    let tag = &b[start..=end];
    let body = end + 1;
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map(|n| body + n + tag.len())
        .ok_or(BadFilter::Unbalanced)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn one_expression_passes() {
        for ok in [
            "tenant_id::text = sync_claim('tenant')",
            "(a > 1) AND (b IN (1, 2))",
            r#""""" = 'x' OR "a)b" = 'c'"#,
            "name = 'it''s (not) closed'",
            r"name = E'a\')' OR name = E'('",
            "name = $$)$$ OR name = $t$($t$",
            "region = ANY (string_to_array(sync_claim('regions'), ','))",
            "",
        ] {
            assert_eq!(check_text(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn separators_and_comments_are_refused_anywhere() {
        assert_eq!(check_text("true; DROP TABLE x"), Err(BadFilter::Token(";")));
        assert_eq!(check_text("a = 'x;y'"), Err(BadFilter::Token(";")));
        assert_eq!(check_text("true -- rest"), Err(BadFilter::Token("--")));
        assert_eq!(check_text("true /* x */"), Err(BadFilter::Token("/*")));
    }

    #[test]
    fn an_expression_cannot_close_the_parenthesis_it_is_put_in() {
        for bad in [
            "true) OR (true",
            "true)) UNION SELECT 1 FROM pg_authid WHERE ((true",
            "(a = 1",
            "a = 'unclosed",
            r#"a = "unclosed"#,
            "a = $x$unclosed",
            r"a = E'\'",
        ] {
            assert_eq!(check_text(bad), Err(BadFilter::Unbalanced), "{bad}");
        }
        // Not an escape string: the E ends an identifier, so \ is plain.
        assert_eq!(check_text(r"xE'\' = b"), Ok(()));
        assert_eq!(check_text("a = $1"), Ok(()));
    }
}
