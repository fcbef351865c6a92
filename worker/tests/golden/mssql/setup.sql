-- Tributary: prepares this database as the SQL Server peer erp.
-- Review it, then run it as a user who may create tables and alter the database
-- (or let tributary-worker run apply it, when its login may). Safe to run again.
SET XACT_ABORT ON;
GO
IF SCHEMA_ID(N'dbo') IS NULL EXEC(N'CREATE SCHEMA [dbo]');
GO
-- the hub's public.customers
IF OBJECT_ID(N'[dbo].[customers]', N'U') IS NULL
CREATE TABLE [dbo].[customers] (
    [id] int NOT NULL,
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
    [tags] nvarchar(max) NULL,
    PRIMARY KEY ([id])
);
GO
-- the hub's sa.les.tab'le]
IF OBJECT_ID(N'[dbo].[sa.les.tab''le]]]', N'U') IS NULL
CREATE TABLE [dbo].[sa.les.tab'le]]] (
    [k"ey] nvarchar(450) NOT NULL,
    []]] uniqueidentifier NOT NULL,
    [va'l] nvarchar(max) NULL,
    PRIMARY KEY ([k"ey], []]])
);
GO
-- the position of each slot that feeds this peer, written with the data
IF OBJECT_ID(N'[dbo].[_tributary_state]', N'U') IS NULL
CREATE TABLE [dbo].[_tributary_state] (
    [slot] nvarchar(128) NOT NULL PRIMARY KEY,
    [lsn] nvarchar(32) NOT NULL,
    [hub] nvarchar(128) NULL,
    [pulled_version] bigint NULL,
    [updated_at] datetime2(6) NOT NULL DEFAULT SYSUTCDATETIME()
);
GO
-- what the app must see: MANUAL, DEFERRED and refused changes, with the hub's row
IF OBJECT_ID(N'[dbo].[_tributary_errors]', N'U') IS NULL
CREATE TABLE [dbo].[_tributary_errors] (
    [id] bigint IDENTITY(1,1) NOT NULL PRIMARY KEY,
    [tbl] nvarchar(256) NOT NULL,
    [pk] nvarchar(900) NOT NULL,
    [op] nchar(1) NOT NULL,
    [outcome] nvarchar(32) NOT NULL,
    [detail] nvarchar(max) NULL,
    [local_data] nvarchar(max) NULL,
    [hub_row] nvarchar(max) NULL,
    [conflict_id] bigint NULL,
    [at] datetime2(6) NOT NULL DEFAULT SYSUTCDATETIME()
);
GO
-- the hub tables copied here, with the tracking epoch of each copy
IF OBJECT_ID(N'[dbo].[_tributary_tables]', N'U') IS NULL
CREATE TABLE [dbo].[_tributary_tables] (
    [hub] nvarchar(300) NOT NULL PRIMARY KEY,
    [epoch] bigint NULL
);
GO
-- the hub revision of each row, the base of the peer's own edits
IF OBJECT_ID(N'[dbo].[_tributary_versions]', N'U') IS NULL
CREATE TABLE [dbo].[_tributary_versions] (
    [tbl] nvarchar(256) NOT NULL,
    [pk_hash] binary(32) NOT NULL,
    [pk] nvarchar(max) NOT NULL,
    [version] bigint NOT NULL,
    PRIMARY KEY ([tbl], [pk_hash])
);
GO
-- snapshot isolation, for reading CHANGETABLE consistently
ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON;
GO
-- Change Tracking on the database (kept 7 days: a peer offline longer re-reads its tables whole)
IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID())
    ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 7 DAYS, AUTO_CLEANUP = ON);
GO
IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'[dbo].[customers]'))
    ALTER TABLE [dbo].[customers] ENABLE CHANGE_TRACKING WITH (TRACK_COLUMNS_UPDATED = ON);
GO
IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_tables WHERE object_id = OBJECT_ID(N'[dbo].[sa.les.tab''le]]]'))
    ALTER TABLE [dbo].[sa.les.tab'le]]] ENABLE CHANGE_TRACKING WITH (TRACK_COLUMNS_UPDATED = ON);
GO
