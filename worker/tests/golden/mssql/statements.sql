-- begin
SET XACT_ABORT ON; BEGIN TRANSACTION;
GO
-- commit
COMMIT TRANSACTION;
GO
-- rollback
IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;
GO
-- columns_of
SELECT c.[name] FROM sys.columns AS c WHERE c.[object_id] = OBJECT_ID(@P1);
GO
-- pull_begin
SET TRANSACTION ISOLATION LEVEL SNAPSHOT;
BEGIN TRANSACTION;
GO
-- pull_end
COMMIT TRANSACTION;
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
GO
-- versions
SELECT CHANGE_TRACKING_CURRENT_VERSION(), CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1));
GO
-- read_position
SELECT [lsn], [hub], [pulled_version] FROM [dbo].[_tributary_state] WITH (UPDLOCK, HOLDLOCK) WHERE [slot] = @P1;
GO
-- save_position
MERGE [dbo].[_tributary_state] WITH (HOLDLOCK) AS st
USING (SELECT @P1 AS [slot]) AS s ON st.[slot] = s.[slot]
WHEN MATCHED THEN UPDATE SET st.[lsn] = @P2, st.[hub] = @P3,
    st.[pulled_version] = COALESCE(st.[pulled_version], CHANGE_TRACKING_CURRENT_VERSION()),
    st.[updated_at] = SYSUTCDATETIME()
WHEN NOT MATCHED THEN INSERT ([slot], [lsn], [hub], [pulled_version])
    VALUES (@P1, @P2, @P3, CHANGE_TRACKING_CURRENT_VERSION());
GO
-- forget_position
UPDATE [dbo].[_tributary_state] SET [lsn] = N'0/0', [updated_at] = SYSUTCDATETIME() WHERE [slot] = @P1;
GO
-- record_outcomes
INSERT INTO [dbo].[_tributary_errors] ([tbl], [pk], [op], [outcome], [detail], [local_data], [hub_row], [conflict_id])
SELECT j.[tbl], j.[pk], j.[op], j.[outcome], j.[detail], j.[local_data], j.[hub_row], j.[conflict_id]
FROM OPENJSON(@P1) WITH (
    [tbl] nvarchar(256) '$.tbl',
    [pk] nvarchar(900) '$.pk',
    [op] nchar(1) '$.op',
    [outcome] nvarchar(32) '$.outcome',
    [detail] nvarchar(max) '$.detail',
    [local_data] nvarchar(max) '$.local_data',
    [hub_row] nvarchar(max) '$.hub_row',
    [conflict_id] bigint '$.conflict_id'
) AS j;
GO
-- save_pulled
UPDATE [dbo].[_tributary_state] SET [pulled_version] = @P2, [updated_at] = SYSUTCDATETIME()
WHERE [slot] = @P1 AND [pulled_version] = @P3;
GO
-- read_pulled
SELECT [pulled_version] FROM [dbo].[_tributary_state] WHERE [slot] = @P1;
GO
-- record_copy
MERGE [dbo].[_tributary_tables] WITH (HOLDLOCK) AS c
USING (SELECT @P1 AS [hub], @P2 AS [epoch]) AS s ON c.[hub] = s.[hub]
WHEN MATCHED THEN UPDATE SET c.[epoch] = s.[epoch]
WHEN NOT MATCHED THEN INSERT ([hub], [epoch]) VALUES (s.[hub], s.[epoch]);
GO
-- copied_tables
SELECT [hub], [epoch] FROM [dbo].[_tributary_tables];
GO
-- setup_done
SELECT CASE WHEN OBJECT_ID(N'[dbo].[_tributary_state]', N'U') IS NOT NULL
    AND OBJECT_ID(N'[dbo].[_tributary_errors]', N'U') IS NOT NULL
    AND OBJECT_ID(N'[dbo].[_tributary_versions]', N'U') IS NOT NULL
    AND EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'[dbo].[customers]'))
    AND EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'[dbo].[sa.les.tab''le]]]'))
    AND EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID())
    AND EXISTS (SELECT 1 FROM sys.databases WHERE database_id = DB_ID() AND snapshot_isolation_state = 1)
    THEN 1 ELSE 0 END;
GO
-- read_position
SELECT [lsn], [hub], [pulled_version] FROM [my]]sch'ema].[_tributary_state] WITH (UPDLOCK, HOLDLOCK) WHERE [slot] = @P1;
GO
-- save_position
MERGE [my]]sch'ema].[_tributary_state] WITH (HOLDLOCK) AS st
USING (SELECT @P1 AS [slot]) AS s ON st.[slot] = s.[slot]
WHEN MATCHED THEN UPDATE SET st.[lsn] = @P2, st.[hub] = @P3,
    st.[pulled_version] = COALESCE(st.[pulled_version], CHANGE_TRACKING_CURRENT_VERSION()),
    st.[updated_at] = SYSUTCDATETIME()
WHEN NOT MATCHED THEN INSERT ([slot], [lsn], [hub], [pulled_version])
    VALUES (@P1, @P2, @P3, CHANGE_TRACKING_CURRENT_VERSION());
GO
-- forget_position
UPDATE [my]]sch'ema].[_tributary_state] SET [lsn] = N'0/0', [updated_at] = SYSUTCDATETIME() WHERE [slot] = @P1;
GO
-- record_outcomes
INSERT INTO [my]]sch'ema].[_tributary_errors] ([tbl], [pk], [op], [outcome], [detail], [local_data], [hub_row], [conflict_id])
SELECT j.[tbl], j.[pk], j.[op], j.[outcome], j.[detail], j.[local_data], j.[hub_row], j.[conflict_id]
FROM OPENJSON(@P1) WITH (
    [tbl] nvarchar(256) '$.tbl',
    [pk] nvarchar(900) '$.pk',
    [op] nchar(1) '$.op',
    [outcome] nvarchar(32) '$.outcome',
    [detail] nvarchar(max) '$.detail',
    [local_data] nvarchar(max) '$.local_data',
    [hub_row] nvarchar(max) '$.hub_row',
    [conflict_id] bigint '$.conflict_id'
) AS j;
GO
-- save_pulled
UPDATE [my]]sch'ema].[_tributary_state] SET [pulled_version] = @P2, [updated_at] = SYSUTCDATETIME()
WHERE [slot] = @P1 AND [pulled_version] = @P3;
GO
-- read_pulled
SELECT [pulled_version] FROM [my]]sch'ema].[_tributary_state] WHERE [slot] = @P1;
GO
-- record_copy
MERGE [my]]sch'ema].[_tributary_tables] WITH (HOLDLOCK) AS c
USING (SELECT @P1 AS [hub], @P2 AS [epoch]) AS s ON c.[hub] = s.[hub]
WHEN MATCHED THEN UPDATE SET c.[epoch] = s.[epoch]
WHEN NOT MATCHED THEN INSERT ([hub], [epoch]) VALUES (s.[hub], s.[epoch]);
GO
-- copied_tables
SELECT [hub], [epoch] FROM [my]]sch'ema].[_tributary_tables];
GO
-- setup_done
SELECT CASE WHEN OBJECT_ID(N'[my]]sch''ema].[_tributary_state]', N'U') IS NOT NULL
    AND OBJECT_ID(N'[my]]sch''ema].[_tributary_errors]', N'U') IS NOT NULL
    AND OBJECT_ID(N'[my]]sch''ema].[_tributary_versions]', N'U') IS NOT NULL
    AND EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'[my]]sch''ema].[customers]'))
    AND EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'[my]]sch''ema].[sa.les.tab''le]]]'))
    AND EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID())
    AND EXISTS (SELECT 1 FROM sys.databases WHERE database_id = DB_ID() AND snapshot_isolation_state = 1)
    THEN 1 ELSE 0 END;
GO
-- stage_create
DROP TABLE IF EXISTS #tributary_stage;
CREATE TABLE #tributary_stage (
    [tributary$op] nchar(1) NOT NULL,
    [tributary$version] bigint NULL,
    [tributary$keep] varchar(1024) NULL,
    [id] int NULL,
    [name] nvarchar(max) NULL,
    [code] nvarchar(20) NULL,
    [flag] bit NULL,
    [small] smallint NULL,
    [big] bigint NULL,
    [r] real NULL,
    [f] float NULL,
    [price] decimal(10,2) NULL,
    [amount] nvarchar(100) NULL,
    [ch] nchar(3) NULL,
    [uid] uniqueidentifier NULL,
    [born] date NULL,
    [at_time] time(6) NULL,
    [local_at] datetime2(6) NULL,
    [at] datetimeoffset(6) NULL,
    [raw] varbinary(max) NULL,
    [doc] nvarchar(max) NULL,
    [tags] nvarchar(max) NULL
);
GO
-- stage_insert
INSERT INTO #tributary_stage ([tributary$op], [tributary$version], [tributary$keep], [id], [name], [code], [flag], [small], [big], [r], [f], [price], [amount], [ch], [uid], [born], [at_time], [local_at], [at], [raw], [doc], [tags])
SELECT j.[tributary$op], j.[tributary$version], j.[tributary$keep], j.[id], j.[name], j.[code], j.[flag], j.[small], j.[big], j.[r], j.[f], j.[price], j.[amount], j.[ch], j.[uid], j.[born], j.[at_time], j.[local_at], j.[at], CONVERT(varbinary(max), j.[raw], 1), j.[doc], j.[tags]
FROM OPENJSON(@P1) WITH (
    [tributary$op] nchar(1) '$[0]',
    [tributary$version] bigint '$[1]',
    [tributary$keep] varchar(1024) '$[2]',
    [id] int '$[3]',
    [name] nvarchar(max) '$[4]',
    [code] nvarchar(20) '$[5]',
    [flag] bit '$[6]',
    [small] smallint '$[7]',
    [big] bigint '$[8]',
    [r] real '$[9]',
    [f] float '$[10]',
    [price] decimal(10,2) '$[11]',
    [amount] nvarchar(100) '$[12]',
    [ch] nchar(3) '$[13]',
    [uid] uniqueidentifier '$[14]',
    [born] date '$[15]',
    [at_time] time(6) '$[16]',
    [local_at] datetime2(6) '$[17]',
    [at] datetimeoffset(6) '$[18]',
    [raw] nvarchar(max) '$[19]',
    [doc] nvarchar(max) '$[20]',
    [tags] nvarchar(max) '$[21]'
) AS j;
GO
-- guard
SELECT COUNT(*) FROM [dbo].[customers] AS t WITH (UPDLOCK, HOLDLOCK) JOIN #tributary_stage AS s ON t.[id] = s.[id];
DELETE s FROM #tributary_stage AS s
WHERE @P2 IS NOT NULL AND EXISTS (
    SELECT 1 FROM CHANGETABLE(CHANGES [dbo].[customers], @P2) AS ct
    WHERE ct.[id] = s.[id] AND (ct.[SYS_CHANGE_CONTEXT] IS NULL OR ct.[SYS_CHANGE_CONTEXT] <> @P1));
SELECT @@ROWCOUNT;
GO
-- merge
WITH CHANGE_TRACKING_CONTEXT (@P1)
MERGE [dbo].[customers] WITH (HOLDLOCK) AS t
USING #tributary_stage AS s ON t.[id] = s.[id]
WHEN MATCHED AND s.[tributary$op] = N'D' THEN DELETE
WHEN MATCHED THEN UPDATE SET
    t.[name] = CASE WHEN SUBSTRING(s.[tributary$keep], 2, 1) = '1' THEN t.[name] ELSE s.[name] END,
    t.[code] = CASE WHEN SUBSTRING(s.[tributary$keep], 3, 1) = '1' THEN t.[code] ELSE s.[code] END,
    t.[flag] = CASE WHEN SUBSTRING(s.[tributary$keep], 4, 1) = '1' THEN t.[flag] ELSE s.[flag] END,
    t.[small] = CASE WHEN SUBSTRING(s.[tributary$keep], 5, 1) = '1' THEN t.[small] ELSE s.[small] END,
    t.[big] = CASE WHEN SUBSTRING(s.[tributary$keep], 6, 1) = '1' THEN t.[big] ELSE s.[big] END,
    t.[r] = CASE WHEN SUBSTRING(s.[tributary$keep], 7, 1) = '1' THEN t.[r] ELSE s.[r] END,
    t.[f] = CASE WHEN SUBSTRING(s.[tributary$keep], 8, 1) = '1' THEN t.[f] ELSE s.[f] END,
    t.[price] = CASE WHEN SUBSTRING(s.[tributary$keep], 9, 1) = '1' THEN t.[price] ELSE s.[price] END,
    t.[amount] = CASE WHEN SUBSTRING(s.[tributary$keep], 10, 1) = '1' THEN t.[amount] ELSE s.[amount] END,
    t.[ch] = CASE WHEN SUBSTRING(s.[tributary$keep], 11, 1) = '1' THEN t.[ch] ELSE s.[ch] END,
    t.[uid] = CASE WHEN SUBSTRING(s.[tributary$keep], 12, 1) = '1' THEN t.[uid] ELSE s.[uid] END,
    t.[born] = CASE WHEN SUBSTRING(s.[tributary$keep], 13, 1) = '1' THEN t.[born] ELSE s.[born] END,
    t.[at_time] = CASE WHEN SUBSTRING(s.[tributary$keep], 14, 1) = '1' THEN t.[at_time] ELSE s.[at_time] END,
    t.[local_at] = CASE WHEN SUBSTRING(s.[tributary$keep], 15, 1) = '1' THEN t.[local_at] ELSE s.[local_at] END,
    t.[at] = CASE WHEN SUBSTRING(s.[tributary$keep], 16, 1) = '1' THEN t.[at] ELSE s.[at] END,
    t.[raw] = CASE WHEN SUBSTRING(s.[tributary$keep], 17, 1) = '1' THEN t.[raw] ELSE s.[raw] END,
    t.[doc] = CASE WHEN SUBSTRING(s.[tributary$keep], 18, 1) = '1' THEN t.[doc] ELSE s.[doc] END,
    t.[tags] = CASE WHEN SUBSTRING(s.[tributary$keep], 19, 1) = '1' THEN t.[tags] ELSE s.[tags] END
WHEN NOT MATCHED BY TARGET AND s.[tributary$op] <> N'D' THEN INSERT ([id], [name], [code], [flag], [small], [big], [r], [f], [price], [amount], [ch], [uid], [born], [at_time], [local_at], [at], [raw], [doc], [tags])
    VALUES (s.[id], s.[name], s.[code], s.[flag], s.[small], s.[big], s.[r], s.[f], s.[price], s.[amount], s.[ch], s.[uid], s.[born], s.[at_time], s.[local_at], s.[at], s.[raw], s.[doc], s.[tags]);
GO
-- merge_versions
MERGE [dbo].[_tributary_versions] WITH (HOLDLOCK) AS v
USING (SELECT @P1 AS [tbl], HASHBYTES('SHA2_256', (SELECT s.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER)) AS [pk_hash],
           (SELECT s.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER) AS [pk],
           s.[tributary$version] AS [version], s.[tributary$op] AS [op]
       FROM #tributary_stage AS s) AS s
ON v.[tbl] = s.[tbl] AND v.[pk_hash] = s.[pk_hash]
WHEN MATCHED AND (s.[op] = N'D' OR s.[version] IS NULL) THEN DELETE
WHEN MATCHED THEN UPDATE SET v.[version] = s.[version]
WHEN NOT MATCHED BY TARGET AND s.[op] <> N'D' AND s.[version] IS NOT NULL
    THEN INSERT ([tbl], [pk_hash], [pk], [version]) VALUES (s.[tbl], s.[pk_hash], s.[pk], s.[version]);
GO
-- empty
WITH CHANGE_TRACKING_CONTEXT (@P1)
DELETE FROM [dbo].[customers];
DELETE FROM [dbo].[_tributary_versions] WHERE [tbl] = @P2;
GO
-- add_column
ALTER TABLE [dbo].[customers] ADD [tags] nvarchar(max) NULL;
GO
-- rename_table
EXEC sp_rename N'[dbo].[old ]]''name]', N'customers';
GO
-- rename_column
EXEC sp_rename N'[dbo].[customers].[old ]]''col]', N'id', N'COLUMN';
GO
-- drop_column
ALTER TABLE [dbo].[customers] DROP COLUMN [id];
GO
-- rename_versions
UPDATE [dbo].[_tributary_versions] SET [tbl] = @P2 WHERE [tbl] = @P1;
GO
-- changes
SELECT ct.[SYS_CHANGE_OPERATION],
       v.[version],
       CASE WHEN t.[id] IS NULL THEN 0 ELSE 1 END,
       CONVERT(nvarchar(max), ct.[id]),
       CONVERT(nvarchar(max), t.[name]),
       CONVERT(nvarchar(max), t.[code]),
       CONVERT(nvarchar(max), t.[flag]),
       CONVERT(nvarchar(max), t.[small]),
       CONVERT(nvarchar(max), t.[big]),
       CONVERT(nvarchar(max), t.[r], 3),
       CONVERT(nvarchar(max), t.[f], 3),
       CONVERT(nvarchar(max), t.[price]),
       CONVERT(nvarchar(max), t.[amount]),
       CONVERT(nvarchar(max), t.[ch]),
       CONVERT(nvarchar(max), t.[uid]),
       CONVERT(nvarchar(max), t.[born], 126),
       CONVERT(nvarchar(max), t.[at_time], 126),
       CONVERT(nvarchar(max), t.[local_at], 126),
       CONVERT(nvarchar(max), t.[at], 126),
       CONVERT(nvarchar(max), t.[raw], 1),
       CONVERT(nvarchar(max), t.[doc]),
       CONVERT(nvarchar(max), t.[tags]),
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'name', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'code', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'flag', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'small', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'big', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'r', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'f', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'price', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'amount', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'ch', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'uid', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'born', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'at_time', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'local_at', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'at', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'raw', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'doc', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END,
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[dbo].[customers]'), N'tags', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END
FROM CHANGETABLE(CHANGES [dbo].[customers], @P1) AS ct
LEFT JOIN [dbo].[customers] AS t ON t.[id] = ct.[id]
LEFT JOIN [dbo].[_tributary_versions] AS v ON v.[tbl] = @P3 AND v.[pk_hash] = HASHBYTES('SHA2_256', (SELECT ct.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER))
WHERE ct.[SYS_CHANGE_CONTEXT] IS NULL OR ct.[SYS_CHANGE_CONTEXT] <> @P2
ORDER BY ct.[SYS_CHANGE_VERSION];
GO
-- all_rows
SELECT N'U',
       v.[version],
       1,
       CONVERT(nvarchar(max), t.[id]),
       CONVERT(nvarchar(max), t.[name]),
       CONVERT(nvarchar(max), t.[code]),
       CONVERT(nvarchar(max), t.[flag]),
       CONVERT(nvarchar(max), t.[small]),
       CONVERT(nvarchar(max), t.[big]),
       CONVERT(nvarchar(max), t.[r], 3),
       CONVERT(nvarchar(max), t.[f], 3),
       CONVERT(nvarchar(max), t.[price]),
       CONVERT(nvarchar(max), t.[amount]),
       CONVERT(nvarchar(max), t.[ch]),
       CONVERT(nvarchar(max), t.[uid]),
       CONVERT(nvarchar(max), t.[born], 126),
       CONVERT(nvarchar(max), t.[at_time], 126),
       CONVERT(nvarchar(max), t.[local_at], 126),
       CONVERT(nvarchar(max), t.[at], 126),
       CONVERT(nvarchar(max), t.[raw], 1),
       CONVERT(nvarchar(max), t.[doc]),
       CONVERT(nvarchar(max), t.[tags]),
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1,
       1
FROM [dbo].[customers] AS t
LEFT JOIN [dbo].[_tributary_versions] AS v ON v.[tbl] = @P1 AND v.[pk_hash] = HASHBYTES('SHA2_256', (SELECT t.[id] AS [id] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER));
GO
-- stage_create
DROP TABLE IF EXISTS #tributary_stage;
CREATE TABLE #tributary_stage (
    [tributary$op] nchar(1) NOT NULL,
    [tributary$version] bigint NULL,
    [tributary$keep] varchar(1024) NULL,
    [k"ey] nvarchar(450) NULL,
    []]] uniqueidentifier NULL,
    [va'l] nvarchar(max) NULL
);
GO
-- stage_insert
INSERT INTO #tributary_stage ([tributary$op], [tributary$version], [tributary$keep], [k"ey], []]], [va'l])
SELECT j.[tributary$op], j.[tributary$version], j.[tributary$keep], j.[k"ey], j.[]]], j.[va'l]
FROM OPENJSON(@P1) WITH (
    [tributary$op] nchar(1) '$[0]',
    [tributary$version] bigint '$[1]',
    [tributary$keep] varchar(1024) '$[2]',
    [k"ey] nvarchar(450) '$[3]',
    []]] uniqueidentifier '$[4]',
    [va'l] nvarchar(max) '$[5]'
) AS j;
GO
-- guard
SELECT COUNT(*) FROM [my]]sch'ema].[sa.les.tab'le]]] AS t WITH (UPDLOCK, HOLDLOCK) JOIN #tributary_stage AS s ON t.[k"ey] = s.[k"ey] AND t.[]]] = s.[]]];
DELETE s FROM #tributary_stage AS s
WHERE @P2 IS NOT NULL AND EXISTS (
    SELECT 1 FROM CHANGETABLE(CHANGES [my]]sch'ema].[sa.les.tab'le]]], @P2) AS ct
    WHERE ct.[k"ey] = s.[k"ey] AND ct.[]]] = s.[]]] AND (ct.[SYS_CHANGE_CONTEXT] IS NULL OR ct.[SYS_CHANGE_CONTEXT] <> @P1));
SELECT @@ROWCOUNT;
GO
-- merge
WITH CHANGE_TRACKING_CONTEXT (@P1)
MERGE [my]]sch'ema].[sa.les.tab'le]]] WITH (HOLDLOCK) AS t
USING #tributary_stage AS s ON t.[k"ey] = s.[k"ey] AND t.[]]] = s.[]]]
WHEN MATCHED AND s.[tributary$op] = N'D' THEN DELETE
WHEN MATCHED THEN UPDATE SET
    t.[va'l] = CASE WHEN SUBSTRING(s.[tributary$keep], 3, 1) = '1' THEN t.[va'l] ELSE s.[va'l] END
WHEN NOT MATCHED BY TARGET AND s.[tributary$op] <> N'D' THEN INSERT ([k"ey], []]], [va'l])
    VALUES (s.[k"ey], s.[]]], s.[va'l]);
GO
-- merge_versions
MERGE [my]]sch'ema].[_tributary_versions] WITH (HOLDLOCK) AS v
USING (SELECT @P1 AS [tbl], HASHBYTES('SHA2_256', (SELECT s.[k"ey] AS [k"ey], s.[]]] AS []]] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER)) AS [pk_hash],
           (SELECT s.[k"ey] AS [k"ey], s.[]]] AS []]] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER) AS [pk],
           s.[tributary$version] AS [version], s.[tributary$op] AS [op]
       FROM #tributary_stage AS s) AS s
ON v.[tbl] = s.[tbl] AND v.[pk_hash] = s.[pk_hash]
WHEN MATCHED AND (s.[op] = N'D' OR s.[version] IS NULL) THEN DELETE
WHEN MATCHED THEN UPDATE SET v.[version] = s.[version]
WHEN NOT MATCHED BY TARGET AND s.[op] <> N'D' AND s.[version] IS NOT NULL
    THEN INSERT ([tbl], [pk_hash], [pk], [version]) VALUES (s.[tbl], s.[pk_hash], s.[pk], s.[version]);
GO
-- empty
WITH CHANGE_TRACKING_CONTEXT (@P1)
DELETE FROM [my]]sch'ema].[sa.les.tab'le]]];
DELETE FROM [my]]sch'ema].[_tributary_versions] WHERE [tbl] = @P2;
GO
-- add_column
ALTER TABLE [my]]sch'ema].[sa.les.tab'le]]] ADD [va'l] nvarchar(max) NULL;
GO
-- rename_table
EXEC sp_rename N'[my]]sch''ema].[old ]]''name]', N'sa.les.tab''le]';
GO
-- rename_column
EXEC sp_rename N'[my]]sch''ema].[sa.les.tab''le]]].[old ]]''col]', N'k"ey', N'COLUMN';
GO
-- drop_column
ALTER TABLE [my]]sch'ema].[sa.les.tab'le]]] DROP COLUMN [k"ey];
GO
-- rename_versions
UPDATE [my]]sch'ema].[_tributary_versions] SET [tbl] = @P2 WHERE [tbl] = @P1;
GO
-- changes
SELECT ct.[SYS_CHANGE_OPERATION],
       v.[version],
       CASE WHEN t.[k"ey] IS NULL THEN 0 ELSE 1 END,
       CONVERT(nvarchar(max), ct.[k"ey]),
       CONVERT(nvarchar(max), ct.[]]]),
       CONVERT(nvarchar(max), t.[va'l]),
       CASE WHEN ct.[SYS_CHANGE_COLUMNS] IS NULL THEN 1 ELSE CHANGE_TRACKING_IS_COLUMN_IN_MASK(COLUMNPROPERTY(OBJECT_ID(N'[my]]sch''ema].[sa.les.tab''le]]]'), N'va''l', 'ColumnId'), ct.[SYS_CHANGE_COLUMNS]) END
FROM CHANGETABLE(CHANGES [my]]sch'ema].[sa.les.tab'le]]], @P1) AS ct
LEFT JOIN [my]]sch'ema].[sa.les.tab'le]]] AS t ON t.[k"ey] = ct.[k"ey] AND t.[]]] = ct.[]]]
LEFT JOIN [my]]sch'ema].[_tributary_versions] AS v ON v.[tbl] = @P3 AND v.[pk_hash] = HASHBYTES('SHA2_256', (SELECT ct.[k"ey] AS [k"ey], ct.[]]] AS []]] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER))
WHERE ct.[SYS_CHANGE_CONTEXT] IS NULL OR ct.[SYS_CHANGE_CONTEXT] <> @P2
ORDER BY ct.[SYS_CHANGE_VERSION];
GO
-- all_rows
SELECT N'U',
       v.[version],
       1,
       CONVERT(nvarchar(max), t.[k"ey]),
       CONVERT(nvarchar(max), t.[]]]),
       CONVERT(nvarchar(max), t.[va'l]),
       1
FROM [my]]sch'ema].[sa.les.tab'le]]] AS t
LEFT JOIN [my]]sch'ema].[_tributary_versions] AS v ON v.[tbl] = @P1 AND v.[pk_hash] = HASHBYTES('SHA2_256', (SELECT t.[k"ey] AS [k"ey], t.[]]] AS []]] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER));
GO
