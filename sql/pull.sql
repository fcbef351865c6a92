-- The pull API: sync_changes_since and sync_payload.
--
-- A version is an xid horizon. A change is stamped with the top-level xid of
-- its transaction; the window [since, until) holds the changes whose stamp
-- falls in it. Because until is always at most the xmin of a snapshot, every
-- transaction in the window has finished when it is read: a late commit is
-- read in the window of its xid, which no reader has passed yet.

-- Checks a window (in versions, as readers hold them) and the tables it
-- covers; returns the tables, oldest oid first. Errors carry a SQLSTATE, a
-- DETAIL and a HINT. A scoped session (tributary.claims set) older than a
-- change of a table's row filter must resync that table in full.
CREATE FUNCTION tributary._window_tables(since bigint, until bigint, tables regclass[])
RETURNS SETOF oid
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    cur bigint := @extschema@.sync_current_version();
    off bigint := tributary._version_offset();
    live text := tributary._hub_identity();
    scoped boolean := tributary._scoped();
    t regclass;
    tr tributary.tracked;
    f tributary.filters;
BEGIN
    IF since IS NULL THEN
        PERFORM tributary._raise('22004', 'since must not be NULL',
            'The version passed as since is NULL.',
            'Pass 0 for a first, full sync, or the version returned by your previous sync.');
    END IF;
    IF since < 0 OR until < 0 THEN
        PERFORM tributary._raise('22023', 'a version must not be negative',
            CASE WHEN since < 0 THEN format('since = %s.', since) ELSE format('until = %s.', until) END,
            'Versions come from sync_current_version(); 0 means a full sync.');
    END IF;
    IF since > cur OR until > cur THEN
        PERFORM tributary._raise('TB001', 'version is from the future',
            format('Asked for [%s, %s) but the current version is %s.', since, coalesce(until::text, 'current'), cur),
            'Only pass versions returned by sync_current_version() or sync_payload(); after a restore, resync in full.');
    END IF;
    IF until < since THEN
        PERFORM tributary._raise('TB005', 'until is before since',
            format('since = %s, until = %s.', since, until),
            'Pass until >= since, or NULL for the current version.');
    END IF;

    IF tables IS NOT NULL THEN
        FOREACH t IN ARRAY tables LOOP
            PERFORM tributary._tracked(t);
        END LOOP;
    END IF;

    FOR tr IN SELECT * FROM tributary.tracked
              WHERE active AND (tables IS NULL OR relid = ANY (tables::oid[]))
              ORDER BY relid LOOP
        IF tr.hub IS DISTINCT FROM live THEN
            PERFORM tributary._raise('TB008', format('table %s was restored from another cluster', tr.relid::regclass),
                format('Its versions were given out by hub %s; this is hub %s.', coalesce(tr.hub, 'unknown'), live),
                'A superuser runs SELECT sync_restored() once after the restore; readers then resync in full.');
        END IF;
        IF since > 0 AND since - off < tr.min_valid THEN
            PERFORM tributary._raise('TB002', format('version %s is too old for table %s', since, tr.relid::regclass),
                format('The oldest version a diff of %s can be served from is %s (reason: %s).',
                       tr.relid::regclass, tr.min_valid + off, coalesce(tr.min_valid_reason, 'tracking started')),
                format('Resync the table in full: sync_changes_since(0, tables => ARRAY[%L::regclass]) or sync_payload(%L, 0).',
                       tr.relid::regclass::text, tr.relid::regclass::text));
        END IF;
        IF scoped AND since > 0 THEN
            SELECT * INTO f FROM tributary.filters x WHERE x.relid = tr.relid AND since - off <= x.since_xid;
            IF FOUND THEN
                PERFORM tributary._raise('TB002',
                    format('version %s is too old for table %s under its row filter', since, tr.relid::regclass),
                    format('The row filter of %s was %s at version %s; what a scoped reader older than that holds was chosen by the filter before.',
                           tr.relid::regclass,
                           CASE WHEN f.filter IS NULL THEN 'removed' ELSE format('set to %L', f.filter) END,
                           f.since_xid + off),
                    format('Resync the table in full: sync_changes_since(0, tables => ARRAY[%L::regclass]) or sync_payload(%L, 0).',
                           tr.relid::regclass::text, tr.relid::regclass::text));
            END IF;
        END IF;
        RETURN NEXT tr.relid;
    END LOOP;
END $$;

-- The SQL that reads the net changes of one table in a window.
-- $1 since, $2 until (as xids: a version less the offset), $3 skip_origin,
-- $4 after_pk, $5 limit. `scoped`: read as a scoped session does (the
-- caller passes tributary._scoped(); sync_changed_for builds the scoped
-- form for each claims set). Scoped, a table with a row filter reads
-- exactly (see docs/architecture.md, "Row filters"):
--   a live row the filter admits .............. I/U, whole, as unscoped
--   a live row it does not admit ............... D (data NULL) when the reader
--       could hold the row (tributary._seen), in a diff; else nothing
--   a tombstone ................................ D only when the reader could
--       hold the row: its image, or an earlier one in the window, admitted
-- Each is its own branch, so that indexes serve them: the admitted rows
-- are read with the filter itself in the WHERE clause (an index on what
-- it reads, e.g. tenant, serves it), and the rows that left it are found
-- from the keys with images in the window (few), not by trying every
-- other reader's row of the window.
CREATE FUNCTION tributary._changes_query(rel oid, since bigint, paged boolean, scoped boolean) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    pk text[] := (SELECT pk_columns FROM tributary.tracked WHERE relid = rel);
    meta text[] := '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}';  -- never in data
    f tributary.filters;
    attnums int2[];
    names text[];
    pk_expr text;
    pk_match text;
    op text := $e$CASE WHEN t.sync_created_xid >= $1 THEN 'I' ELSE 'U' END$e$;
    data text := 'tributary.row_json(t.*)';  -- t.*: the row even if a column is named t
    changed text := 'CASE WHEN t.sync_created_xid >= $1 THEN %1$L::text[]
                    ELSE tributary.changed_columns(t.sync_colmeta, t.sync_created_xid, $1, %2$L::int2[], %1$L::text[])
               END';
    rows_where text := '';
    deletes_where text := '';
    left_q text := '';
    -- Paged reads order by the typed key (so the primary key's index
    -- serves a page without reading the whole window) and continue after
    -- the typed value of after_pk ($4).
    key_out text := '';
    key_after text := '';
    key_order text;
    key_cols text;
    key_out_kk text;
    key_cols_kk text;
    q text;
BEGIN
    SELECT array_agg(a.attnum ORDER BY a.attnum), array_agg(a.attname::text ORDER BY a.attnum)
      INTO attnums, names
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> ALL (meta);
    SELECT 'jsonb_build_object(' || string_agg(format('%L, t.%I', c, c), ', ') || ')',
           string_agg(format('t.%1$I = k.%1$I', c), ' AND ')
      INTO pk_expr, pk_match FROM unnest(pk) c;
    changed := format(changed, names, attnums);
    IF paged THEN
        SELECT string_agg(format(', t.%I AS _k%s', c, i), '' ORDER BY i),
               string_agg(format(', kk.%I AS _k%s', c, i), '' ORDER BY i),
               string_agg(format('(SELECT a.%I FROM jsonb_populate_record(NULL::%s, $4) AS a)', c, rel::regclass), ', ' ORDER BY i),
               string_agg(format('w._k%s', i), ', ' ORDER BY i),
               string_agg(format('t.%I', c), ', ' ORDER BY i),
               string_agg(format('kk.%I', c), ', ' ORDER BY i)
          INTO key_out, key_out_kk, key_after, key_order, key_cols, key_cols_kk
          FROM unnest(pk) WITH ORDINALITY AS u(c, i);
    END IF;
    IF scoped THEN
        SELECT * INTO f FROM tributary.filters x WHERE x.relid = rel AND x.filter IS NOT NULL;
    END IF;
    IF f.filter IS NOT NULL THEN
        -- The filter as written (NULL does not admit, in a WHERE clause).
        rows_where := format(' AND ((%s)::boolean)', f.filter);
        deletes_where := ' AND ' || tributary._seen(f, 'd.pk');
        IF since > 0 THEN
            -- Live rows that left the filter: only keys with an image in
            -- the window can have been held and no longer be admitted.
            left_q := format($q$
        UNION ALL
        SELECT %1$s::oid::regclass, 'D', %2$s, NULL::json, t.sync_version, t.sync_origin, NULL::text[]%3$s
          FROM %4$s AS t
         WHERE t.sync_xid >= $1 AND t.sync_xid < $2
           AND ($3::text IS NULL OR t.sync_origin IS DISTINCT FROM $3)
           AND (%5$s) IN (SELECT %6$s FROM (SELECT DISTINCT h.pk FROM (%7$s) AS h) AS hk
                           CROSS JOIN LATERAL jsonb_populate_record(NULL::%4$s, hk.pk) AS kk)
           AND NOT %8$s AND %9$s%10$s$q$,
                rel, pk_expr, CASE WHEN paged THEN key_out ELSE '' END, rel::regclass,
                (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(pk) c),
                (SELECT string_agg(format('kk.%I', c), ', ') FROM unnest(pk) c),
                tributary._seen_images(f, NULL), tributary._admits(f, NULL), tributary._seen(f, pk_expr),
                CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols, key_after) ELSE '' END);
        END IF;
    END IF;

    q := format($q$
        SELECT %1$s::oid::regclass AS tbl,
               %2$s AS op,
               %3$s AS pk,
               %4$s AS data,
               t.sync_version AS row_version,
               t.sync_origin AS origin,
               %5$s AS changed_columns%8$s
          FROM %6$s AS t
         WHERE t.sync_xid >= $1 AND t.sync_xid < $2
           AND ($3::text IS NULL OR t.sync_origin IS DISTINCT FROM $3)%7$s%9$s$q$,
        rel, op, pk_expr, data, changed, rel::regclass, rows_where,
        CASE WHEN paged THEN key_out ELSE '' END,
        CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols, key_after) ELSE '' END)
        || left_q;
    -- Deletes: not owed to a first (full) sync, and superseded when the key
    -- is live again (the live row is delivered instead).
    IF since > 0 THEN
        q := q || format($q$
        UNION ALL
        SELECT %1$s::oid::regclass, 'D', d.pk, NULL::json, d.version, d.origin, NULL::text[]%5$s
          FROM tributary.tombstones d%6$s
         WHERE d.relid = %1$s AND d.xid >= $1 AND d.xid < $2
           AND ($3::text IS NULL OR d.origin IS DISTINCT FROM $3)
           AND NOT EXISTS (SELECT 1 FROM jsonb_populate_record(NULL::%2$s, d.pk) AS k
                           JOIN %2$s AS t ON %3$s)%4$s%7$s$q$,
            rel, rel::regclass, pk_match, deletes_where,
            CASE WHEN paged THEN key_out_kk ELSE '' END,
            CASE WHEN paged THEN format(' CROSS JOIN LATERAL jsonb_populate_record(NULL::%s, d.pk) AS kk', rel::regclass) ELSE '' END,
            CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols_kk, key_after) ELSE '' END);
    END IF;
    IF paged THEN
        q := 'SELECT w.tbl, w.op, w.pk, w.data, w.row_version, w.origin, w.changed_columns FROM ('
             || q || ') AS w ORDER BY ' || key_order || ' LIMIT $5';
    END IF;
    RETURN q;
END $$;

CREATE FUNCTION sync_changes_since(
    since bigint,
    until bigint DEFAULT NULL,
    tables regclass[] DEFAULT NULL,
    skip_origin text DEFAULT NULL,
    page_size integer DEFAULT NULL,
    after_tbl regclass DEFAULT NULL,
    after_pk jsonb DEFAULT NULL)
RETURNS TABLE (tbl regclass, op text, pk jsonb, data json, row_version bigint, origin text,
               changed_columns text[])
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    upto bigint := coalesce(until, @extschema@.sync_current_version());
    off bigint := tributary._version_offset();
    scoped boolean := tributary._scoped();
    rel oid;
    left_rows bigint := page_size;
    got bigint;
BEGIN
    IF page_size IS NOT NULL AND page_size < 1 THEN
        PERFORM tributary._raise('22023', 'page_size must be at least 1',
            format('page_size = %s.', page_size), 'Pass NULL for no paging, or a positive row count.');
    END IF;
    IF (after_tbl IS NULL) <> (after_pk IS NULL) THEN
        PERFORM tributary._raise('22023', 'after_tbl and after_pk go together',
            format('after_tbl = %s, after_pk = %s.', coalesce(after_tbl::text, 'NULL'), coalesce(after_pk::text, 'NULL')),
            'Pass both, taken from the tbl and pk of the last row of the previous page.');
    END IF;
    IF after_tbl IS NOT NULL AND page_size IS NULL THEN
        PERFORM tributary._raise('22023', 'a continuation needs page_size',
            'after_tbl/after_pk were given without page_size.', 'Pass the same page_size as the first page.');
    END IF;
    FOR rel IN SELECT * FROM tributary._window_tables(since, upto, tables) LOOP
        CONTINUE WHEN after_tbl IS NOT NULL AND rel < after_tbl::oid;
        IF page_size IS NULL THEN
            RETURN QUERY EXECUTE tributary._changes_query(rel, since, false, scoped)
                USING greatest(since - off, 0), upto - off, skip_origin, NULL::jsonb, NULL::bigint;
        ELSE
            RETURN QUERY EXECUTE tributary._changes_query(rel, since, true, scoped)
                USING greatest(since - off, 0), upto - off, skip_origin,
                      CASE WHEN rel = after_tbl::oid THEN after_pk END, left_rows;
            GET DIAGNOSTICS got = ROW_COUNT;
            left_rows := left_rows - got;
            EXIT WHEN left_rows <= 0;
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION sync_changes_since(bigint, bigint, regclass[], text, integer, regclass, jsonb) IS
  'Net changes stamped in [since, until). Protocol: v := sync_current_version(); read sync_changes_since(last, v); last := v. Scoped sessions read through row filters.';

-- What a payload of one table from from_version is: the version the client
-- stores next (taken in this snapshot), Diff or Full with its reason code,
-- and the version its rows are read from (0 for a Full). Defined once, for
-- sync_payload and for the gateway, which pages the rows itself with
-- sync_payload_rows(tbl, since, version, ...). A scoped session older than
-- a change of the table's row filter gets a Full (ReasonCode 6).
CREATE FUNCTION sync_payload_window(tbl regclass, from_version bigint)
RETURNS TABLE (version bigint, type text, reason_code integer, since bigint)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v bigint := @extschema@.sync_current_version();
    t tributary.tracked := tributary._tracked(tbl);
BEGIN
    IF from_version IS NULL THEN
        PERFORM tributary._raise('22004', 'from_version must not be NULL',
            'The version passed as from_version is NULL.', 'Pass 0 for a first sync, or the Version of your last payload.');
    END IF;
    version := v;
    type := 'Diff';
    reason_code := 0;
    since := from_version;
    IF from_version = 0 THEN
        type := 'Full'; reason_code := 1;
    ELSIF from_version > 0 AND from_version <= v AND from_version - tributary._version_offset() < t.min_valid THEN
        type := 'Full';
        reason_code := CASE t.min_valid_reason WHEN 'retention' THEN 2 WHEN 'truncate' THEN 3 WHEN 'retrack' THEN 4
                                               WHEN 'restore' THEN 5 ELSE 2 END;
        since := 0;
    ELSIF from_version > 0 AND from_version <= v AND tributary._scoped()
          AND EXISTS (SELECT 1 FROM tributary.filters f
                       WHERE f.relid = tbl AND from_version - tributary._version_offset() <= f.since_xid) THEN
        type := 'Full';
        reason_code := 6;
        since := 0;
    END IF;
    -- The errors reading the window gives (a negative version, one from the
    -- future, a table restored from another cluster), before any row is read.
    PERFORM tributary._window_tables(since, v, ARRAY[tbl]);
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION sync_payload_window(regclass, bigint) IS
  'What sync_payload(tbl, from_version) answers: Version to store next, Type, ReasonCode, and the version its rows are read from.';

-- The Data of a payload: one item per net change of one table in [since,
-- until), in pk order, pageable like sync_changes_since (after_pk: the pk
-- of the last item of the previous page). An item is the row (for a delete,
-- its key) with "$operation" in front, spliced into the row's JSON text
-- (tributary.payload_item): no jsonb round trip on a large download. The
-- key "$operation" is the operation's: a column of that name is left out,
-- as sync_payload always did (the table's items only go through jsonb).
CREATE FUNCTION sync_payload_rows(tbl regclass, since bigint, until bigint, after_pk jsonb DEFAULT NULL,
                                  page_size integer DEFAULT NULL)
RETURNS TABLE (pk jsonb, item json)
LANGUAGE sql STABLE
AS $$
    SELECT c.pk, tributary.payload_item(c.op,
               CASE WHEN NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl
                                        AND a.attname = '$operation' AND NOT a.attisdropped)
                    THEN CASE WHEN c.op = 'D' THEN c.pk::json ELSE c.data END
                    ELSE (CASE WHEN c.op = 'D' THEN c.pk ELSE c.data::jsonb END - '$operation')::json END)
      FROM @extschema@.sync_changes_since(since, until, ARRAY[tbl], NULL, page_size,
                                          CASE WHEN after_pk IS NOT NULL THEN tbl END, after_pk) AS c
     ORDER BY c.pk
$$;
COMMENT ON FUNCTION sync_payload_rows(regclass, bigint, bigint, jsonb, integer) IS
  'The Data items of a payload of one table for [since, until), in pk order; page with page_size and after_pk.';

CREATE FUNCTION sync_payload(tbl regclass, from_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    w record;
    rows jsonb;
BEGIN
    SELECT * INTO w FROM @extschema@.sync_payload_window(tbl, from_version);
    SELECT coalesce(jsonb_agg(r.item::jsonb ORDER BY r.pk), '[]'::jsonb)
      INTO rows
      FROM @extschema@.sync_payload_rows(tbl, w.since, w.version) AS r;
    RETURN jsonb_build_object(
        'Metadata', jsonb_build_object('Sync', jsonb_build_object('Version', w.version, 'Type', w.type,
                                                                  'ReasonCode', w.reason_code)),
        'Data', rows);
END $$;
COMMENT ON FUNCTION sync_payload(regclass, bigint) IS
  'Offline-client payload. ReasonCode: 0 diff, 1 first sync, 2 older than retention, 3 truncated, 4 re-tracked, 5 restored, 6 row filter changed.';
