#!/usr/bin/env python3
"""Prints functions of sql/*.sql as an upgrade script needs them.

    python3 scripts/sql_blocks.py sync_track tributary._shape ...

Each name's `CREATE FUNCTION` block becomes `CREATE OR REPLACE FUNCTION`,
with its `COMMENT ON FUNCTION` if it has one, byte for byte as in sql/: the
upgrade check (tests/tests/upgrade.rs) compares the function bodies of an
upgraded hub with a fresh install's. Functions of the public API are
written `@extschema@.name`, as the extension's schema is not on the
search_path while an upgrade script runs.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def sources():
    return "\n".join(p.read_text() for p in sorted((ROOT / "sql").glob("*.sql")))


def block(text, name):
    start = text.find(f"CREATE FUNCTION {name}(")
    if start < 0:
        sys.exit(f"no CREATE FUNCTION {name}( in sql/")
    body = text.index("AS $$", start)
    end = text.index("$$;", body + 5) + 3
    out = text[start:end]
    qualified = name if "." in name else f"@extschema@.{name}"
    out = out.replace(f"CREATE FUNCTION {name}(", f"CREATE OR REPLACE FUNCTION {qualified}(", 1)
    comment = re.compile(rf"\nCOMMENT ON FUNCTION {re.escape(name)}\(.*?';\n", re.S)
    m = comment.match(text, end)
    if m:
        out += m.group(0).rstrip("\n").replace(
            f"COMMENT ON FUNCTION {name}(", f"COMMENT ON FUNCTION {qualified}(", 1)
    return out


def main():
    text = sources()
    print("\n\n".join(block(text, n) for n in sys.argv[1:]))


if __name__ == "__main__":
    main()
