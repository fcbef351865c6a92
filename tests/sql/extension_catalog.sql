-- One line per property of every object of the extension `tributary`, in a
-- form that is the same in any two databases (no OIDs): what an upgrade must
-- leave equal to a fresh install.
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'tributary'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
),
rels AS (
    SELECT c.oid, c.oid::regclass::text AS name, c.relkind FROM pg_class c
    JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
)
SELECT 'function ' || p.oid::regprocedure::text || ' ' ||
       concat_ws(' ', 'returns ' || pg_get_function_result(p.oid), 'lang ' || l.lanname,
                 'volatility ' || p.provolatile::text, 'strict ' || p.proisstrict, 'parallel ' || p.proparallel::text,
                 'secdef ' || p.prosecdef, 'config ' || coalesce(p.proconfig::text, '-'),
                 'acl ' || coalesce(p.proacl::text, '-'),
                 'src ' || md5(p.prosrc), 'comment ' || coalesce(md5(obj_description(p.oid, 'pg_proc')), '-'))
FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
JOIN pg_language l ON l.oid = p.prolang
UNION ALL
SELECT 'relation ' || r.name || ' kind ' || r.relkind::text || ' acl ' || coalesce(c.relacl::text, '-')
       || ' rls ' || c.relrowsecurity || ' comment ' || coalesce(md5(obj_description(r.oid, 'pg_class')), '-')
FROM rels r JOIN pg_class c ON c.oid = r.oid
UNION ALL
SELECT 'column ' || r.name || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull ' || a.attnotnull || ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
       || ' identity ' || a.attidentity::text || ' acl ' || coalesce(a.attacl::text, '-') || ' pos ' || a.attnum
FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
UNION ALL
SELECT 'constraint ' || r.name || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
FROM rels r JOIN pg_constraint co ON co.conrelid = r.oid
UNION ALL
SELECT 'index ' || r.name || ' ' || pg_get_indexdef(i.indexrelid)
FROM rels r JOIN pg_index i ON i.indrelid = r.oid
UNION ALL
SELECT 'view ' || r.name || ' ' || md5(pg_get_viewdef(r.oid)) || ' options ' || coalesce(c.reloptions::text, '-')
FROM rels r JOIN pg_class c ON c.oid = r.oid WHERE r.relkind::text = 'v'
UNION ALL
SELECT 'trigger ' || r.name || ' ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
FROM rels r JOIN pg_trigger t ON t.tgrelid = r.oid AND NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || r.name || ' ' || po.polname || ' ' || po.polcmd::text || ' ' || po.polpermissive
       || ' roles ' || po.polroles::text || ' using ' || coalesce(pg_get_expr(po.polqual, po.polrelid), '-')
       || ' check ' || coalesce(pg_get_expr(po.polwithcheck, po.polrelid), '-')
FROM rels r JOIN pg_policy po ON po.polrelid = r.oid
UNION ALL
SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || e.evtfoid::regproc::text
       || ' tags ' || coalesce(e.evttags::text, '-') || ' enabled ' || e.evtenabled::text
FROM pg_event_trigger e JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
UNION ALL
SELECT 'schema ' || n.nspname || ' acl ' || coalesce(n.nspacl::text, '-')
FROM pg_namespace n JOIN members m ON m.classid = 'pg_namespace'::regclass AND m.objid = n.oid
UNION ALL
SELECT 'type ' || t.oid::regtype::text || ' ' || t.typtype::text
FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
UNION ALL
SELECT 'config dump ' || c.relname || ' filter ' || coalesce(x.cond, '-')
FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(relid, cond)
JOIN pg_class c ON c.oid = x.relid
WHERE e.extname = 'tributary'
UNION ALL
SELECT 'publication ' || p.pubname || ' all ' || p.puballtables || ' ' || p.pubinsert || p.pubupdate || p.pubdelete || p.pubtruncate
FROM pg_publication p JOIN members m ON m.classid = 'pg_publication'::regclass AND m.objid = p.oid
ORDER BY 1;
