//! The SQL-facing surface written in Rust: the row trigger on the write
//! path and the GUCs. The rest of the SQL API is plain SQL in `sql/`.

pub mod colmeta;
pub mod guc;
pub mod rowjson;
pub mod trigger;
