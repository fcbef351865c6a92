// In-backend tests (`cargo pgrx test`). Included into the extension crate
// under `#[cfg(any(test, feature = "pg_test"))]`.
