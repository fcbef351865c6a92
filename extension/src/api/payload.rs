//! `tributary.payload_item`: the splice behind `sync_payload_rows`
//! (sql/pull.sql); the logic is `crate::payload`.

#[pgrx::pg_schema]
pub mod tributary {
    use pgrx::prelude::*;

    /// `body` (a row's or a key's JSON object) with `"$operation": op` as
    /// its first member, as JSON text. IMMUTABLE, STRICT, PARALLEL SAFE,
    /// not SECURITY DEFINER.
    #[pg_extern(
        immutable,
        strict,
        parallel_safe,
        sql = r#"
CREATE FUNCTION tributary.payload_item(op text, body json) RETURNS json
STRICT IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'payload_item_wrapper';
"#
    )]
    fn payload_item(op: &str, body: &[u8]) -> Vec<u8> {
        match crate::payload::item(op, body) {
            // A bytea-shaped varlena holding JSON text, declared `json` in
            // SQL (as row_json does): valid JSON by construction.
            Some(item) => item,
            None => {
                pgrx::pg_sys::panic::ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "a payload item is made of a JSON object",
                    "tributary.payload_item",
                )
                .set_detail(format!(
                    "body = {}.",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
                .set_hint("Pass a row's JSON (tributary.row_json) or a primary key object.")
                .report(PgLogLevel::ERROR);
                unreachable!("ERROR does not return")
            }
        }
    }
}
