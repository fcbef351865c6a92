//! The library and the extension's SQL must be of one release: a new
//! library is installed for every database at once, but each database's SQL
//! changes only with `ALTER EXTENSION tributary UPDATE`. Until then the
//! engine and the origin check refuse to run against the older SQL, with a
//! hint, instead of failing on a missing column or guessing.

use pgrx::prelude::*;

/// This library's release.
pub const LIBRARY: &str = env!("CARGO_PKG_VERSION");

thread_local! {
    /// Set once the SQL was seen current: it only ever moves forward.
    static CURRENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The installed SQL's release, when it is not this library's.
pub fn sql_behind(client: &pgrx::spi::SpiClient<'_>) -> Option<String> {
    if CURRENT.with(|c| c.get()) {
        return None;
    }
    let installed: Option<String> = client
        .select(
            "SELECT extversion::text FROM pg_extension WHERE extname = 'tributary'",
            Some(1),
            &[],
        )
        .ok()
        .and_then(|t| t.first().get(1).ok().flatten());
    match installed {
        Some(v) if v == LIBRARY => {
            CURRENT.with(|c| c.set(true));
            None
        }
        Some(v) => Some(v),
        None => Some("none".into()),
    }
}

/// Raises 55000 when the installed SQL is not this library's release.
pub fn check_sql_current(client: &pgrx::spi::SpiClient<'_>, function: &'static str) {
    if let Some(installed) = sql_behind(client) {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the tributary extension in this database is {installed}, its library {LIBRARY}"),
            function,
        )
        .set_detail("A new release of the library was installed; this database's SQL has not been updated to it yet.")
        .set_hint("Run ALTER EXTENSION tributary UPDATE in this database.")
        .report(PgLogLevel::ERROR);
    }
}
