"""A dataset's SQL: one read-only statement, its two parameters in each driver's style."""

from __future__ import annotations

import pytest

from jobs.exports.query import QueryRefused, check, prepare, uses_window

REFUSED = {
    "DELETE FROM topics": "starts with DELETE",
    "UPDATE topics SET title = 'x'": "starts with UPDATE",
    "INSERT INTO topics (title) VALUES ('x')": "starts with INSERT",
    "ATTACH DATABASE '/etc/passwd' AS x": "starts with ATTACH",
    "PRAGMA table_info(topics)": "starts with PRAGMA",
    "SELECT 1; SELECT 2": "2 statements",
    "SELECT * FROM topics; DELETE FROM topics": "2 statements",
    "select e'\\'';delete from topics;'": "statements",
    "WITH gone AS (DELETE FROM topics RETURNING *) SELECT * FROM gone": "DELETE changes data",
    "WITH x AS (SELECT 1) INSERT INTO topics SELECT * FROM x": "INSERT",
    "SELECT * INTO copy_of_topics FROM topics": "INTO",
    "SELECT * FROM topics INTO OUTFILE '/tmp/x'": "INTO",
    "SELECT * FROM topics FOR UPDATE": "locks rows",
    "SELECT * FROM topics FOR KEY SHARE": "locks rows",
    "CREATE TABLE x AS SELECT 1": "starts with CREATE",
    "DROP TABLE topics": "starts with DROP",
    "VALUES (1)": "starts with VALUES",
    "EXPLAIN SELECT 1": "starts with EXPLAIN",
    "COPY topics TO '/tmp/x'": "starts with COPY",
    "SELECT * FROM topics WHERE id = ?": "Unknown parameter ?",
    "SELECT * FROM topics WHERE day >= :start": "Unknown parameter :start",
    "SELECT * FROM topics WHERE day >= %(begin)s": "Unknown parameter %(begin)s",
    "SELECT 'unterminated": "cannot be read",
    "   ": "Enter a SELECT query",
    "-- only a comment": "0 statements",
}


@pytest.mark.parametrize(("sql", "reason"), REFUSED.items())
def test_anything_but_one_reading_query_is_refused_with_a_reason(sql, reason):
    with pytest.raises(QueryRefused) as info:
        check(sql)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM topics",
        "select id, title from topics where day >= %(start)s and day < %(end)s;",
        "WITH soon AS (SELECT * FROM topics WHERE day < %(end)s) SELECT * FROM soon",
        "SELECT replace(title, 'a', 'b') AS r, lock, \"call\", updated_at FROM topics",
        "SELECT 'DELETE FROM topics; -- not a statement' AS text",
        "/* Monday's plan */ SELECT 1 -- trailing comment",
        "SELECT title FROM topics WHERE title LIKE 'Mö%' UNION ALL SELECT 'x'",
    ],
)
def test_reading_queries_are_accepted(sql):
    check(sql)


def test_placeholders_are_translated_and_literal_percent_signs_survive():
    sql = "SELECT * FROM t WHERE a >= %(start)s AND a < %(end)s AND b LIKE 'x%' -- 100%\n;"
    pyformat = prepare(sql, "pyformat")
    assert pyformat.text == "SELECT * FROM t WHERE a >= %(start)s AND a < %(end)s AND b LIKE 'x%%' -- 100%%\n"
    assert pyformat.parameters({"start": 1, "end": 2}) == {"start": 1, "end": 2}
    named = prepare(sql, "named")
    assert named.text == "SELECT * FROM t WHERE a >= :start AND a < :end AND b LIKE 'x%' -- 100%\n"
    qmark = prepare("SELECT %(end)s, %(start)s, %(end)s", "qmark")
    assert qmark.text == "SELECT ?, ?, ?\n"
    assert qmark.parameters({"start": "s", "end": "e"}) == ("e", "s", "e")


def test_a_placeholder_inside_a_string_is_text_not_a_parameter():
    prepared = prepare("SELECT '%(start)s' AS literal", "named")
    assert prepared.text == "SELECT '%(start)s' AS literal\n"
    assert prepared.order == ()
    assert uses_window("SELECT * FROM t WHERE d >= %(start)s") == {"start"}


def test_the_text_ends_with_a_newline_so_a_trailing_comment_swallows_nothing():
    assert prepare("SELECT 1 -- note", "named").text.endswith("-- note\n")
