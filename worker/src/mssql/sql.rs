//! Every statement a SQL Server peer is sent, push and pull, as pure
//! functions of the peer table: golden files pin them and the test tier
//! parses them with a T-SQL parser (`scripts/check_tsql.py`).
//!
//! ```text
//!  push, per destination transaction (one SQL Server transaction):
//!    BEGIN TRANSACTION; read _tributary_state WITH (UPDLOCK, HOLDLOCK)     -- still where we left it?
//!    per table:  stage_create; stage_insert(@P1 = rows as JSON, one parameter)
//!                guard       -- rows the app changed since the last pull wait for the pull
//!                merge       -- WITH CHANGE_TRACKING_CONTEXT(marker): never pulled back
//!                merge_versions (the hub revision per key: the base of the app's edits)
//!    save_position; COMMIT TRANSACTION
//!  pull, per round:
//!    snapshot transaction: current version; per table min valid version, then changes (or all rows)
//!    (the hub applies them)
//!    record_outcomes; save_pulled
//! ```
//!
//! Parameters are `@P1…` (tiberius numbers them so); values are never
//! written into the text. Names are quoted `[…]` with `]` doubled, or
//! written as `N'…'` literals with `'` doubled.

use super::{ident, literal};

/// The marker the worker's writes carry as their Change Tracking context,
/// so that its pull skips them: the bytes of `tributary`.
pub const CONTEXT: &[u8] = b"tributary";

/// The session's staging table (one at a time; dropped and made per use).
pub const STAGE: &str = "#tributary_stage";

/// The staging table's own columns, before the data columns: the change
/// (`I`, `U` or `D`), the hub revision, and which columns keep their
/// value (unchanged TOASTed values: `1` at a column's place).
const OP: &str = "[tributary$op]";
const VERSION: &str = "[tributary$version]";
const KEEP: &str = "[tributary$keep]";

/// A table as the peer holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerTable {
    /// The peer's schema (unquoted).
    pub schema: String,
    /// The peer's table name (unquoted; see [`super::HubTable::peer_name`]).
    pub name: String,
    /// The hub table, quoted: `"schema"."table"`.
    pub hub: String,
    /// Data columns in the hub's order (no tracking or generated columns).
    pub columns: Vec<PeerColumn>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerColumn {
    pub name: String,
    /// The hub type.
    pub oid: u32,
    /// The SQL Server type ([`super::map_type`]).
    pub sql: String,
    pub key: bool,
    /// NULL allowed at the peer (as the hub's column; a table made from
    /// the stream alone allows NULL in every non-key column).
    pub nullable: bool,
}

impl PeerTable {
    /// `[schema].[name]`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    fn keys(&self) -> impl Iterator<Item = &PeerColumn> {
        self.columns.iter().filter(|c| c.key)
    }

    /// `a.[k1] = b.[k1] AND …`
    fn key_match(&self, a: &str, b: &str) -> String {
        self.keys()
            .map(|c| format!("{a}.{0} = {b}.{0}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The key of `alias`'s row as the peer's own string of it: a SHA-256
    /// of its JSON (`FOR JSON` of the typed key columns), the same for a
    /// staged row and a Change Tracking row since their types are the
    /// table's. `_tributary_versions` is keyed by it.
    fn key_hash(&self, alias: &str) -> String {
        let cols: Vec<String> = self
            .keys()
            .map(|c| format!("{alias}.{0} AS {0}", ident(&c.name)))
            .collect();
        format!(
            "HASHBYTES('SHA2_256', (SELECT {} FOR JSON PATH, WITHOUT_ARRAY_WRAPPER))",
            cols.join(", ")
        )
    }
}

fn schema_table(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Opens a destination (or pull) transaction. `XACT_ABORT`: any error
/// rolls the whole transaction back, never a part of it.
pub fn begin() -> &'static str {
    "SET XACT_ABORT ON; BEGIN TRANSACTION;"
}

pub fn commit() -> &'static str {
    "COMMIT TRANSACTION;"
}

pub fn rollback() -> &'static str {
    "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;"
}

/// The slot's position, locked until the transaction ends (`@P1` slot).
pub fn read_position(schema: &str) -> String {
    format!(
        "SELECT [lsn], [hub], [pulled_version] FROM {} WITH (UPDLOCK, HOLDLOCK) WHERE [slot] = @P1;",
        schema_table(schema, "_tributary_state")
    )
}

/// Stores the position (`@P1` slot, `@P2` end LSN, `@P3` hub identity).
/// The first one also sets where the pull starts: what the app writes
/// from now on.
pub fn save_position(schema: &str) -> String {
    format!(
        "MERGE {} WITH (HOLDLOCK) AS st\n\
         USING (SELECT @P1 AS [slot]) AS s ON st.[slot] = s.[slot]\n\
         WHEN MATCHED THEN UPDATE SET st.[lsn] = @P2, st.[hub] = @P3,\n    \
         st.[pulled_version] = COALESCE(st.[pulled_version], CHANGE_TRACKING_CURRENT_VERSION()),\n    \
         st.[updated_at] = SYSUTCDATETIME()\n\
         WHEN NOT MATCHED THEN INSERT ([slot], [lsn], [hub], [pulled_version])\n    \
         VALUES (@P1, @P2, @P3, CHANGE_TRACKING_CURRENT_VERSION());",
        schema_table(schema, "_tributary_state")
    )
}

/// Forgets the slot's position (`@P1`): the peer is copied anew.
pub fn forget_position(schema: &str) -> String {
    format!(
        "UPDATE {} SET [lsn] = N'0/0', [updated_at] = SYSUTCDATETIME() WHERE [slot] = @P1;",
        schema_table(schema, "_tributary_state")
    )
}

/// Records that the hub table `@P1` (quoted) is copied here, of the
/// tracking epoch `@P2`, in the copy's transaction.
pub fn record_copy(schema: &str) -> String {
    format!(
        "MERGE {} WITH (HOLDLOCK) AS c\n\
         USING (SELECT @P1 AS [hub], @P2 AS [epoch]) AS s ON c.[hub] = s.[hub]\n\
         WHEN MATCHED THEN UPDATE SET c.[epoch] = s.[epoch]\n\
         WHEN NOT MATCHED THEN INSERT ([hub], [epoch]) VALUES (s.[hub], s.[epoch]);",
        schema_table(schema, "_tributary_tables")
    )
}

/// The hub tables copied here, with their epochs.
pub fn copied_tables(schema: &str) -> String {
    format!(
        "SELECT [hub], [epoch] FROM {};",
        schema_table(schema, "_tributary_tables")
    )
}

/// The staging table for `t`'s changes: its own columns, then the data
/// columns with the table's types, all nullable (a delete stages its key
/// alone).
pub fn stage_create(t: &PeerTable) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("    {} {} NULL", ident(&c.name), c.sql))
        .collect();
    format!(
        "DROP TABLE IF EXISTS {STAGE};\nCREATE TABLE {STAGE} (\n    {OP} nchar(1) NOT NULL,\n    {VERSION} bigint NULL,\n    {KEEP} varchar(1024) NULL,\n{}\n);",
        cols.join(",\n")
    )
}

/// Stages rows given as one parameter (`@P1`): a JSON array of arrays
/// `[op, version, keep, column values…]` in the table's column order.
/// Binary values come as `0x…` text and are converted with style 1.
pub fn stage_insert(t: &PeerTable) -> String {
    let names: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
    let select: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            if c.sql.starts_with("varbinary") {
                format!("CONVERT({}, j.{}, 1)", c.sql, ident(&c.name))
            } else {
                format!("j.{}", ident(&c.name))
            }
        })
        .collect();
    let with: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = if c.sql.starts_with("varbinary") {
                "nvarchar(max)"
            } else {
                c.sql.as_str()
            };
            format!("    {} {ty} '$[{}]'", ident(&c.name), i + 3)
        })
        .collect();
    format!(
        "INSERT INTO {STAGE} ({OP}, {VERSION}, {KEEP}, {})\n\
         SELECT j.{OP}, j.{VERSION}, j.{KEEP}, {}\n\
         FROM OPENJSON(@P1) WITH (\n    {OP} nchar(1) '$[0]',\n    {VERSION} bigint '$[1]',\n    {KEEP} varchar(1024) '$[2]',\n{}\n) AS j;",
        names.join(", "),
        select.join(", "),
        with.join(",\n")
    )
}

/// Takes out of the staging table the rows whose key the app changed
/// since the last pull (`@P2`, NULL before the first): the hub's change
/// must not overwrite an edit the hub has not seen. The pull sends that
/// edit; the hub resolves it and writes the result back. `@P1` is the
/// worker's context marker. The staged keys' rows are locked first
/// (`UPDLOCK, HOLDLOCK`, until the commit), so an app's edit either
/// committed before the check, and is seen, or waits for the merge.
/// Answers, in its last result, how many rows wait.
pub fn guard(t: &PeerTable) -> String {
    format!(
        "SELECT COUNT(*) FROM {} AS t WITH (UPDLOCK, HOLDLOCK) JOIN {STAGE} AS s ON {};\n\
         DELETE s FROM {STAGE} AS s\n\
         WHERE @P2 IS NOT NULL AND EXISTS (\n    \
         SELECT 1 FROM CHANGETABLE(CHANGES {}, @P2) AS ct\n    \
         WHERE {} AND (ct.[SYS_CHANGE_CONTEXT] IS NULL OR ct.[SYS_CHANGE_CONTEXT] <> @P1));\n\
         SELECT @@ROWCOUNT;",
        t.qualified(),
        t.key_match("t", "s"),
        t.qualified(),
        t.key_match("ct", "s")
    )
}

/// Merges the staged rows into the table, under the worker's Change
/// Tracking context (`@P1`). A column marked in `keep` keeps its value.
pub fn merge(t: &PeerTable) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
    let src: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
    let set: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.key)
        .map(|(i, c)| {
            let c = ident(&c.name);
            format!(
                "t.{c} = CASE WHEN SUBSTRING(s.{KEEP}, {}, 1) = '1' THEN t.{c} ELSE s.{c} END",
                i + 1
            )
        })
        .collect();
    let update = if set.is_empty() {
        String::new()
    } else {
        format!(
            "WHEN MATCHED THEN UPDATE SET\n    {}\n",
            set.join(",\n    ")
        )
    };
    format!(
        "WITH CHANGE_TRACKING_CONTEXT (@P1)\n\
         MERGE {} WITH (HOLDLOCK) AS t\n\
         USING {STAGE} AS s ON {}\n\
         WHEN MATCHED AND s.{OP} = N'D' THEN DELETE\n\
         {update}\
         WHEN NOT MATCHED BY TARGET AND s.{OP} <> N'D' THEN INSERT ({})\n    VALUES ({});",
        t.qualified(),
        t.key_match("t", "s"),
        cols.join(", "),
        src.join(", ")
    )
}

/// Keeps `_tributary_versions` (`@P1`: the peer table's name) in step
/// with the staged rows: the hub revision of each key, gone with a delete.
pub fn merge_versions(t: &PeerTable) -> String {
    format!(
        "MERGE {} WITH (HOLDLOCK) AS v\n\
         USING (SELECT @P1 AS [tbl], {} AS [pk_hash],\n           \
         (SELECT {} FOR JSON PATH, WITHOUT_ARRAY_WRAPPER) AS [pk],\n           \
         s.{VERSION} AS [version], s.{OP} AS [op]\n       \
         FROM {STAGE} AS s) AS s\n\
         ON v.[tbl] = s.[tbl] AND v.[pk_hash] = s.[pk_hash]\n\
         WHEN MATCHED AND (s.[op] = N'D' OR s.[version] IS NULL) THEN DELETE\n\
         WHEN MATCHED THEN UPDATE SET v.[version] = s.[version]\n\
         WHEN NOT MATCHED BY TARGET AND s.[op] <> N'D' AND s.[version] IS NOT NULL\n    \
         THEN INSERT ([tbl], [pk_hash], [pk], [version]) VALUES (s.[tbl], s.[pk_hash], s.[pk], s.[version]);",
        schema_table(&t.schema, "_tributary_versions"),
        t.key_hash("s"),
        t.keys()
            .map(|c| format!("s.{0} AS {0}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Empties the table under the worker's context (`@P1`), and forgets its
/// revisions (`@P2`: the peer table's name): a TRUNCATE at the hub, or
/// the start of an initial copy.
pub fn empty(t: &PeerTable) -> String {
    format!(
        "WITH CHANGE_TRACKING_CONTEXT (@P1)\nDELETE FROM {};\nDELETE FROM {} WHERE [tbl] = @P2;",
        t.qualified(),
        schema_table(&t.schema, "_tributary_versions")
    )
}

/// The columns the peer's table has (`@P1`: the quoted table name), to
/// add those the hub added.
pub fn columns_of() -> &'static str {
    "SELECT c.[name] FROM sys.columns AS c WHERE c.[object_id] = OBJECT_ID(@P1);"
}

/// Adds a column the hub added, nullable.
pub fn add_column(t: &PeerTable, c: &PeerColumn) -> String {
    format!(
        "ALTER TABLE {} ADD {} {} NULL;",
        t.qualified(),
        ident(&c.name),
        c.sql
    )
}

/// Follows a hub table's rename: the peer table `old` in `schema`
/// becomes `new` (sp_rename takes the new name unquoted, as a literal).
pub fn rename_table(schema: &str, old: &str, new: &str) -> String {
    format!(
        "EXEC sp_rename {}, {};",
        literal(&schema_table(schema, old)),
        literal(new)
    )
}

/// Follows a hub column's rename.
pub fn rename_column(t: &PeerTable, old: &str, new: &str) -> String {
    format!(
        "EXEC sp_rename {}, {}, N'COLUMN';",
        literal(&format!("{}.{}", t.qualified(), ident(old))),
        literal(new)
    )
}

/// Follows a column the hub dropped.
pub fn drop_column(t: &PeerTable, name: &str) -> String {
    format!("ALTER TABLE {} DROP COLUMN {};", t.qualified(), ident(name))
}

/// The revisions of a renamed table move with it (`@P1` old, `@P2` new
/// peer name).
pub fn rename_versions(schema: &str) -> String {
    format!(
        "UPDATE {} SET [tbl] = @P2 WHERE [tbl] = @P1;",
        schema_table(schema, "_tributary_versions")
    )
}

/// Pull: reads the peer's changes consistently.
pub fn pull_begin() -> &'static str {
    "SET TRANSACTION ISOLATION LEVEL SNAPSHOT;\nBEGIN TRANSACTION;"
}

/// Pull: back to the default level once the snapshot transaction ended.
pub fn pull_end() -> &'static str {
    "COMMIT TRANSACTION;\nSET TRANSACTION ISOLATION LEVEL READ COMMITTED;"
}

/// Pull: the database's current Change Tracking version (the pull's next
/// position), and the oldest one still valid for the table `@P1`.
pub fn versions() -> &'static str {
    "SELECT CHANGE_TRACKING_CURRENT_VERSION(), CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1));"
}

/// A column rendered as text the pull reads back exactly
/// ([`super::value::pull_style`]), from `alias`.
fn rendered(c: &PeerColumn, alias: &str) -> String {
    match super::value::pull_style(&c.sql) {
        Some(style) => format!(
            "CONVERT(nvarchar(max), {alias}.{}, {style})",
            ident(&c.name)
        ),
        None => format!("CONVERT(nvarchar(max), {alias}.{})", ident(&c.name)),
    }
}

/// Pull: the net changes since `@P1` that the worker did not write
/// (`@P2`: its context marker), in the order of their versions. Columns:
/// operation (`I`/`U`/`D`), the key's base revision (`@P3`: the peer
/// table's name), whether the row is there (1/0), then each column's
/// value as text (the key's from Change Tracking, the others from the
/// row), then per non-key column whether an update changed it.
pub fn changes(t: &PeerTable) -> String {
    let first_key = t.keys().next().map(|c| ident(&c.name)).unwrap_or_default();
    let mut select = vec![
        "ct.[SYS_CHANGE_OPERATION]".to_string(),
        "v.[version]".to_string(),
        format!("CASE WHEN t.{first_key} IS NULL THEN 0 ELSE 1 END"),
    ];
    for c in &t.columns {
        select.push(rendered(c, if c.key { "ct" } else { "t" }));
    }
    // A NULL mask: every column changed (an insert, or tracking without
    // column masks).
    let object = literal(&t.qualified());
    for c in t.columns.iter().filter(|c| !c.key) {
        select.push(format!(
            "CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID({object}), {}, 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END",
            literal(&c.name)
        ));
    }
    format!(
        "SELECT {}\n\
         FROM CHANGETABLE(CHANGES {}, @P1) AS ct\n\
         LEFT JOIN {} AS t ON {}\n\
         LEFT JOIN {} AS v ON v.[tbl] = @P3 AND v.[pk_hash] = {}\n\
         WHERE ct.[SYS_CHANGE_CONTEXT] IS NULL OR ct.[SYS_CHANGE_CONTEXT] <> @P2\n\
         ORDER BY ct.[SYS_CHANGE_VERSION];",
        select.join(",\n       "),
        t.qualified(),
        t.qualified(),
        t.key_match("t", "ct"),
        schema_table(&t.schema, "_tributary_versions"),
        t.key_hash("ct")
    )
}

/// Pull: every row of the table, for a peer whose position fell below
/// the table's minimum valid version (Change Tracking forgot what
/// changed): the same columns as [`changes`], each row an update of all
/// its columns (`@P1`: the peer table's name).
pub fn all_rows(t: &PeerTable) -> String {
    let mut select = vec![
        "N'U'".to_string(),
        "v.[version]".to_string(),
        "1".to_string(),
    ];
    select.extend(t.columns.iter().map(|c| rendered(c, "t")));
    for _ in t.columns.iter().filter(|c| !c.key) {
        select.push("1".into());
    }
    format!(
        "SELECT {}\nFROM {} AS t\nLEFT JOIN {} AS v ON v.[tbl] = @P1 AND v.[pk_hash] = {};",
        select.join(",\n       "),
        t.qualified(),
        schema_table(&t.schema, "_tributary_versions"),
        t.key_hash("t")
    )
}

/// Pull: what the app must see (conflicts, parked and refused changes),
/// as one parameter (`@P1`): a JSON array of objects.
pub fn record_outcomes(schema: &str) -> String {
    format!(
        "INSERT INTO {} ([tbl], [pk], [op], [outcome], [detail], [local_data], [hub_row], [conflict_id])\n\
         SELECT j.[tbl], j.[pk], j.[op], j.[outcome], j.[detail], j.[local_data], j.[hub_row], j.[conflict_id]\n\
         FROM OPENJSON(@P1) WITH (\n    [tbl] nvarchar(256) '$.tbl',\n    [pk] nvarchar(900) '$.pk',\n    \
         [op] nchar(1) '$.op',\n    [outcome] nvarchar(32) '$.outcome',\n    [detail] nvarchar(max) '$.detail',\n    \
         [local_data] nvarchar(max) '$.local_data',\n    [hub_row] nvarchar(max) '$.hub_row',\n    \
         [conflict_id] bigint '$.conflict_id'\n) AS j;",
        schema_table(schema, "_tributary_errors")
    )
}

/// Pull: its new position (`@P1` slot, `@P2` version), once the hub
/// committed what it read; only where it was (`@P3`), so that a position
/// forgotten meanwhile (a new copy) is not overwritten.
pub fn save_pulled(schema: &str) -> String {
    format!(
        "UPDATE {} SET [pulled_version] = @P2, [updated_at] = SYSUTCDATETIME()\n\
         WHERE [slot] = @P1 AND [pulled_version] = @P3;",
        schema_table(schema, "_tributary_state")
    )
}

/// Pull: where it starts (`@P1` slot).
pub fn read_pulled(schema: &str) -> String {
    format!(
        "SELECT [pulled_version] FROM {} WHERE [slot] = @P1;",
        schema_table(schema, "_tributary_state")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement, for a table of every mapped type and for one of
    /// hostile names in a hostile schema: the golden file the T-SQL
    /// checker parses.
    #[test]
    fn every_statement_is_the_golden_one() {
        let all = super::super::tests::tables();
        let typed = all[0].peer_table("dbo");
        let hostile = all[1].peer_table("my]sch'ema");
        let mut out = String::new();
        let mut add = |what: &str, stmt: &str| {
            out.push_str(&format!("-- {what}\n{stmt}\nGO\n"));
        };
        add("begin", begin());
        add("commit", commit());
        add("rollback", rollback());
        add("columns_of", columns_of());
        add("pull_begin", pull_begin());
        add("pull_end", pull_end());
        add("versions", versions());
        for schema in ["dbo", "my]sch'ema"] {
            add("read_position", &read_position(schema));
            add("save_position", &save_position(schema));
            add("forget_position", &forget_position(schema));
            add("record_outcomes", &record_outcomes(schema));
            add("save_pulled", &save_pulled(schema));
            add("read_pulled", &read_pulled(schema));
            add("record_copy", &record_copy(schema));
            add("copied_tables", &copied_tables(schema));
            add(
                "setup_done",
                &super::super::setup_done(schema, &["customers".into(), "sa.les.tab'le]".into()]),
            );
        }
        for t in [&typed, &hostile] {
            add("stage_create", &stage_create(t));
            add("stage_insert", &stage_insert(t));
            add("guard", &guard(t));
            add("merge", &merge(t));
            add("merge_versions", &merge_versions(t));
            add("empty", &empty(t));
            add("add_column", &add_column(t, t.columns.last().unwrap()));
            add(
                "rename_table",
                &rename_table(&t.schema, "old ]'name", &t.name),
            );
            add(
                "rename_column",
                &rename_column(t, "old ]'col", &t.columns[0].name),
            );
            add("drop_column", &drop_column(t, &t.columns[0].name));
            add("rename_versions", &rename_versions(&t.schema));
            add("changes", &changes(t));
            add("all_rows", &all_rows(t));
        }
        super::super::tests::golden("statements.sql", &out);
    }

    #[test]
    fn a_key_only_table_merges_without_an_update() {
        let t = PeerTable {
            schema: "dbo".into(),
            name: "tags".into(),
            hub: "\"public\".\"tags\"".into(),
            columns: vec![PeerColumn {
                name: "tag".into(),
                oid: 25,
                sql: "nvarchar(450)".into(),
                key: true,
                nullable: false,
            }],
        };
        let m = merge(&t);
        assert!(!m.contains("UPDATE SET"), "{m}");
        assert!(
            m.contains("THEN DELETE") && m.contains("INSERT ([tag])"),
            "{m}"
        );
    }
}
