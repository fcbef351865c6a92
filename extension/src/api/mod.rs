//! The SQL-facing surface written in Rust: the row trigger on the write
//! path, the JSON serializer and changed-columns decoder of the read path,
//! the resolver engine behind sync_apply, and the GUCs. The rest of the SQL
//! API is plain SQL in `sql/`.

pub mod apply;
pub mod batch;
pub mod colmeta;
pub mod guc;
pub mod rowjson;
pub mod trigger;
