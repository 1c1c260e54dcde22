"""The named-SQL loader: `-- name:` statements, and `-- fragment:` text they `-- include:`."""

from __future__ import annotations

import pytest

from perdure.storage.queries import load_queries, parse_queries

SQL = """
-- header comment, not a statement

-- fragment: claim_set
-- What a claim sets.
SET status = 'running',
    attempt = attempt + 1

-- name: claim
-- Comments are dropped.
UPDATE runs
-- include: claim_set
WHERE id = :id;

-- name: claim_nested
WITH c AS (
    UPDATE runs
    -- include: claim_set;
)
SELECT 1;
"""


def test_an_include_stands_for_its_fragment_which_is_no_statement_of_its_own() -> None:
    queries = parse_queries(SQL)

    assert queries == {
        "claim": "UPDATE runs\nSET status = 'running',\n    attempt = attempt + 1\nWHERE id = :id",
        "claim_nested": (
            "WITH c AS (\n    UPDATE runs\n    SET status = 'running',\n"
            "        attempt = attempt + 1\n)\nSELECT 1"
        ),
    }


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("-- name: q\nSELECT 1\n-- include: nope\n", "'q' includes 'nope', which is not a"),
        ("-- fragment: f\n-- include: f\n-- name: q\n-- include: f\n", "'f' includes itself"),
        ("-- fragment: f\nSET a = 1\n-- name: q\nSELECT 1\n", "fragment 'f' is never included"),
        ("-- fragment: f\nA\n-- fragment: f\nB\n", "fragment 'f' is defined twice"),
        ("-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n", "query 'q' is defined twice"),
    ],
)
def test_a_broken_file_is_refused_with_what_is_wrong(sql: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_queries(sql)


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_the_shipped_files_leave_no_include_and_every_claim_sets_the_same(dialect: str) -> None:
    queries = load_queries(dialect)

    assert not [name for name, sql in queries.items() if "include:" in sql or "--" in sql]
    for name in ("claim_runs", "claim_queue", "claim_ids"):
        assert "lease_owner = " in queries[name]
        assert "attempt = attempt + 1" in queries[name]
