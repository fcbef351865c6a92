#!/usr/bin/env python3
"""Parses every T-SQL golden file with a real T-SQL parser (sqlglot,
read="tsql"), batch by batch (batches end at a line "GO"), and fails on
any syntax error.

sqlglot has no grammar for a few SQL Server statements (ALTER DATABASE ...
SET, ALTER TABLE ... ENABLE CHANGE_TRACKING, SET TRANSACTION ISOLATION
LEVEL SNAPSHOT) and falls back to an opaque "Command" for them. Such a
fallback is accepted only for those statement kinds (listed below), and
their text is then checked here: quotes, brackets and parentheses
balanced, and the words the statement needs. Anything else that falls
back fails the check.

Two constructs inside statements it cannot parse either, so they are
taken off in their exact generated form and the rest is parsed:
- the prefix `WITH CHANGE_TRACKING_CONTEXT (@Pn)` before a MERGE, DELETE,
  UPDATE or INSERT (the rest must be one of those);
- the table function `CHANGETABLE(CHANGES [schema].[table], @Pn)`, which
  is replaced by a placeholder table name.

    check_tsql.py FILE...
"""
import logging
import re
import sys

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel

# Statements sqlglot cannot parse, and what their text must be.
OPAQUE = [
    re.compile(r"^ALTER DATABASE CURRENT SET (ALLOW_SNAPSHOT_ISOLATION ON|CHANGE_TRACKING = ON \(CHANGE_RETENTION = \d+ DAYS, AUTO_CLEANUP = ON\))$"),
    re.compile(r"^ALTER TABLE (\[([^\]]|\]\])+\]\.)?\[([^\]]|\]\])+\] ENABLE CHANGE_TRACKING WITH \(TRACK_COLUMNS_UPDATED = ON\)$"),
    re.compile(r"^SET TRANSACTION ISOLATION LEVEL SNAPSHOT$"),
]

NAME = r"(\[([^\]]|\]\])+\]\.)?\[([^\]]|\]\])+\]"
CONTEXT = re.compile(r"^WITH CHANGE_TRACKING_CONTEXT \(@P\d+\)\n")
CHANGETABLE = re.compile(r"CHANGETABLE\(CHANGES " + NAME + r", @P\d+\)")


def unwrap(stmt):
    """The statement with the constructs sqlglot lacks taken off (see the
    module's words), and the statement kinds the rest must be (None: any)."""
    kinds = None
    m = CONTEXT.match(stmt)
    if m:
        stmt = stmt[m.end():]
        kinds = (exp.Merge, exp.Delete, exp.Update, exp.Insert)
    stmt = CHANGETABLE.sub("[tributary$changetable]", stmt)
    return stmt, kinds


def opaque_ok(stmt):
    """A statement sqlglot lacks, in one of the known forms; or one of
    them under IF NOT EXISTS (<a query sqlglot parses>)."""
    if any(o.match(stmt) for o in OPAQUE):
        return True
    m = re.match(r"^IF NOT EXISTS \((?P<q>.*)\)\s+(?P<then>ALTER .*)$", stmt, re.S)
    if not m:
        return False
    try:
        sqlglot.parse_one(m.group("q"), read="tsql", error_level=ErrorLevel.RAISE)
    except Exception:
        return False
    return any(o.match(m.group("then")) for o in OPAQUE)


def past_quoted(text, i, close):
    """The index after the quoted run opening at i and ending at `close`
    (doubled inside it), or -1 when it never closes."""
    j = i + 1
    while True:
        j = text.find(close, j)
        if j < 0:
            return -1
        if text[j + 1 : j + 2] == close:
            j += 2
            continue
        return j + 1


def balanced(text):
    """Quotes closed, and [] and () nested properly outside quotes."""
    depth, i = 0, 0
    while i < len(text):
        c = text[i]
        if c in "'[":
            i = past_quoted(text, i, "'" if c == "'" else "]")
            if i < 0:
                return False
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


def statements(batch):
    """The batch's statements (split on ; outside quotes and brackets)."""
    out, cur, i = [], [], 0
    quote = None
    for c in batch:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
            continue
        if c in "'[":
            quote = "'" if c == "'" else "]"
        if c == ";":
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return [s for s in out if s and not all(l.strip().startswith("--") or not l.strip() for l in s.splitlines())]


def strip_comments(s):
    return "\n".join(l for l in s.splitlines() if not l.strip().startswith("--")).strip()


def check(name, text):
    errors = []
    batches = re.split(r"^GO$", text, flags=re.M)
    for b in batches:
        for stmt in statements(b):
            stmt = strip_comments(stmt)
            if not stmt:
                continue
            stmt, kinds = unwrap(stmt)
            if "CHANGETABLE" in stmt or "CHANGE_TRACKING_CONTEXT" in stmt:
                errors.append(f"{name}: CHANGETABLE or CHANGE_TRACKING_CONTEXT not in its generated form:\n  {stmt[:200]}")
                continue
            if any(o.match(stmt) for o in OPAQUE):
                continue  # one of the exact forms sqlglot lacks
            try:
                parsed = sqlglot.parse(stmt, read="tsql", error_level=ErrorLevel.RAISE)
            except Exception as e:  # a syntax error
                errors.append(f"{name}: {e}\n  in: {stmt[:200]}")
                continue
            if kinds and not (len(parsed) == 1 and isinstance(parsed[0], kinds)):
                errors.append(f"{name}: CHANGE_TRACKING_CONTEXT before a statement that is not a MERGE, DELETE, UPDATE or INSERT:\n  {stmt[:200]}")
                continue
            for p in parsed:
                if isinstance(p, exp.Command) or any(isinstance(n, exp.Command) for n in p.walk()):
                    if not (opaque_ok(stmt) and balanced(stmt)):
                        errors.append(f"{name}: not parsed (and not a known statement sqlglot lacks):\n  {stmt[:200]}")
    return errors


def main(paths):
    # sqlglot warns on each fallback; those are judged here instead.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    # The checker must be able to fail: a broken statement is refused.
    assert check("self-test", "CREATE TABLE [dbo].[t] ([a] int,\nGO\n"), "the checker accepts a broken statement"
    assert check("self-test", "ALTER DATABASE CURRENT SET SOMETHING ELSE;\nGO\n"), "the checker accepts an unknown opaque statement"
    assert check("self-test", "IF NOT EXISTS (SELECT 1 FROM x)\n    ALTER TABLE [t] ENABLE CHANGE_TRACKIN WITH (TRACK_COLUMNS_UPDATED = ON);\nGO\n"), "the checker accepts a misspelt statement under IF"
    assert check("self-test", "WITH CHANGE_TRACKING_CONTEXT (@P1)\nMERGE [t] AS t USING [s] AS s ON t.[a] = s.[a] WHEN MATCHED THEN DELETE (;\nGO\n"), "the checker accepts a broken MERGE under a context"
    assert check("self-test", "WITH CHANGE_TRACKING_CONTEXT (@P1)\nSELECT 1;\nGO\n"), "the checker accepts a context before a SELECT"
    assert check("self-test", "SELECT 1 FROM CHANGETABLE(CHANGES [t], 5) AS ct;\nGO\n"), "the checker accepts CHANGETABLE with a literal version"
    assert check("self-test", "SELECT 1 FROM CHANGETABLE(CHANGES [t], @P1) AS ct WHERE;\nGO\n"), "the checker accepts a broken query around CHANGETABLE"
    assert check("self-test", "SET TRANSACTION ISOLATION LEVEL SNAPSHOTS;\nGO\n"), "the checker accepts a misspelt isolation level"
    assert not check("self-test", "WITH CHANGE_TRACKING_CONTEXT (@P1)\nDELETE FROM [dbo].[t];\nGO\n"), "the checker refuses a good statement"
    errors, n = [], 0
    for p in paths:
        with open(p, encoding="utf-8") as f:
            errors += check(p, f.read())
        n += 1
    for e in errors:
        print(e, file=sys.stderr)
    print(f"check_tsql: {n} file(s), {len(errors)} error(s)")
    return 1 if errors or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
