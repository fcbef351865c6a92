//! Built-in PostgreSQL type OIDs that the JSON conversion and the peers'
//! type mappings know. Every other type travels as the text PostgreSQL
//! prints for it.

/// Built-in type OIDs.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const JSONB: u32 = 3802;
}

/// The element type of a built-in array type, if `t` is one.
pub fn element_of(t: u32) -> Option<u32> {
    Some(match t {
        1000 => oid::BOOL,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1028 => oid::OID,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1231 => oid::NUMERIC,
        199 => oid::JSON,
        3807 => oid::JSONB,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        // text, varchar, bpchar, name, uuid, date, time, timetz, interval,
        // bytea, inet, cidr, macaddr: elements that are JSON strings.
        1009 | 1015 | 1014 | 1003 | 2951 | 1182 | 1183 | 1270 | 1187 | 1001 | 1041 | 651 | 1040 => {
            oid::TEXT
        }
        _ => return None,
    })
}
