//! Which destinations a change goes to.
//!
//! ```text
//!  Change(table, origin) ──> for each destination d:
//!       d.tables matches "schema.table"   (globs, `*` = any run of characters)
//!   and origin != d.name                  (never echo a change to its writer)
//!  Change(Schema)   ──> d takes the table by its new or its old name
//! ```
//!
//! Transactions stay whole and in commit order: the router only filters
//! the changes inside them; every destination sees every Begin and Commit,
//! so that its progress moves on even when nothing in a transaction is for
//! it.

use crate::transaction::Change;

/// Matches `name` against a glob where `*` stands for any run of
/// characters (including dots) and everything else is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    pub tables: Vec<String>,
}

pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        Router { routes }
    }

    /// Whether destination `i` takes `change`. Which tables a destination
    /// takes is worked out once per table description.
    pub fn wants(&self, i: usize, change: &Change) -> bool {
        let tables = change.table.routes.get_or_init(|| {
            let name = change.table.plain_name();
            self.routes
                .iter()
                .map(|r| r.tables.iter().any(|g| glob_match(g, &name)))
                .collect()
        });
        if let Some(only) = &change.only_for {
            return **only == *self.routes[i].name;
        }
        if let Some(s) = &change.schema {
            // A destination that held the table by its old name follows
            // the change too.
            let from = s.from_plain_name();
            return tables[i] || self.routes[i].tables.iter().any(|g| glob_match(g, &from));
        }
        tables[i] && change.origin.as_deref() != Some(self.routes[i].name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_schema_and_table() {
        assert!(glob_match("public.*", "public.customers"));
        assert!(glob_match("*", "any.thing"));
        assert!(glob_match("public.cust*", "public.customers"));
        assert!(glob_match("*.orders", "sales.orders"));
        assert!(glob_match("public.tab'le", "public.tab'le"));
        assert!(!glob_match("public.*", "sales.customers"));
        assert!(!glob_match("public.customers", "public.customers2"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c-y-b"));
        assert!(glob_match("public.\"]", "public.\"]"));
    }
}
