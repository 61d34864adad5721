"""A dataset's SQL: checked to be one read-only query, and its two parameters translated
to each driver's placeholder style (pure: no Django, no database).

The administrator writes one ``SELECT`` (or ``WITH … SELECT``) and puts ``%(start)s``
and ``%(end)s`` where the window's bounds go; everything else is taken literally (a
``%`` in a ``LIKE`` pattern needs no escaping). :func:`prepare` parses the text with
sqlparse (a tokenizer that knows string literals, quoted names, comments and dollar
quoting, so a ``;`` or a keyword inside a string is not mistaken for a statement) and
refuses:

* anything but exactly one statement (``SELECT 1; DELETE …``: two statements);
* a statement that does not begin with ``SELECT`` or ``WITH`` (``DELETE``, ``UPDATE``,
  ``INSERT``, ``ATTACH``, ``PRAGMA``, ``COPY``, ``EXPLAIN``, ``SET`` …);
* a data-changing keyword anywhere in it (``WITH d AS (DELETE … RETURNING *) SELECT``,
  ``INSERT``/``UPDATE``/``MERGE``/``REPLACE INTO``, any ``CREATE``/``DROP``/``ALTER``/
  ``TRUNCATE``), ``SELECT … INTO`` (makes a table, or a file on MySQL) and the row
  locks ``FOR UPDATE`` / ``FOR SHARE``;
* other placeholders than the two (``?``, ``:name``, ``$1``, ``%s``, ``%(other)s``) and
  text the tokenizer cannot read (an unterminated string).

This is the first of two locks: every driver also runs the query in a read-only
transaction (PostgreSQL and MySQL/MariaDB refuse writes there; SQLite is opened
read-only with an authorizer that allows reading only), so a function with side effects
that slips past the words still cannot change data. The database account should be a
read-only one all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlparse
from django.utils.translation import gettext as _
from sqlparse import tokens as T

PARAMETERS = ("start", "end")
_PLACEHOLDERS = {f"%({name})s": name for name in PARAMETERS}
# Keywords that change data or the schema, wherever they appear (sqlparse marks most of
# them as DML or DDL; these are checked by name as well).
_WRITING = {"INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "TRUNCATE", "INTO"}
_LOCKS = {"UPDATE", "SHARE"}  # FOR [NO KEY] UPDATE, FOR [KEY] SHARE, LOCK IN SHARE MODE


class QueryRefused(ValueError):
    """The SQL is not one read-only query with the two parameters; shown to users."""


@dataclass(frozen=True)
class Prepared:
    """A checked query: its text with the placeholders in *style*, and the parameter
    names in the order a positional style needs them."""

    text: str
    style: str
    order: tuple[str, ...]

    def parameters(self, values: dict) -> dict | tuple:
        """The parameters as the driver takes them (a dict for named styles)."""
        if self.style == "qmark":
            return tuple(values[name] for name in self.order)
        return {name: values[name] for name in PARAMETERS if name in self.order}


def _meaningful(statement) -> list:
    return [t for t in statement.flatten() if not t.is_whitespace and t.ttype not in T.Comment]


def _keyword(token) -> str:
    return " ".join(token.normalized.upper().split()) if token.ttype in T.Keyword else ""


def check(sql: str) -> list:
    """The flattened tokens of the one statement in *sql*; :class:`QueryRefused`
    otherwise."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRefused(_("Enter a SELECT query."))
    statements = [s for s in sqlparse.parse(sql) if _meaningful(s)]
    if len(statements) != 1:
        raise QueryRefused(
            _("Enter exactly one SELECT statement; this text holds %(count)s statements (separated by “;”).")
            % {"count": len(statements)}
        )
    statement = statements[0]
    tokens = list(statement.flatten())
    words = _meaningful(statement)
    # A ";" may end the statement; anything after it is another statement.
    for index, token in enumerate(words):
        if token.ttype is T.Punctuation and token.value == ";" and index != len(words) - 1:
            raise QueryRefused(_("Enter exactly one SELECT statement; remove what follows the “;”."))
    first = words[0]
    if not ((first.ttype is T.Keyword.DML and _keyword(first) == "SELECT") or first.ttype is T.Keyword.CTE):
        what = first.value.split()[0].upper() if first.value.strip() else "?"
        raise QueryRefused(
            _("Only a query that reads is allowed (SELECT or WITH … SELECT); this one starts with %(word)s.")
            % {"word": what}
        )
    if statement.get_type() != "SELECT":
        raise QueryRefused(
            _("Only a query that reads is allowed; this one is a %(type)s statement.") % {"type": statement.get_type()}
        )
    recent: list[str] = []
    for index, token in enumerate(words):
        if token.ttype is T.Error:
            raise QueryRefused(_("The query cannot be read: is a quote or a comment left open?"))
        word = _keyword(token)
        following = words[index + 1] if index + 1 < len(words) else None
        if token.ttype in T.Keyword.DDL:
            raise QueryRefused(_("Only a query that reads is allowed; %(word)s changes the database.") % {"word": word})
        if word in _LOCKS and ({"FOR", "LOCK"} & set(recent)):
            raise QueryRefused(_("FOR UPDATE / FOR SHARE locks rows; an export only reads. Remove it."))
        is_function = following is not None and following.value == "("
        if (token.ttype is T.Keyword.DML and word != "SELECT") or (word in _WRITING and not is_function):
            if word == "INTO":
                raise QueryRefused(_("SELECT … INTO writes a table or a file; an export only reads. Remove INTO."))
            raise QueryRefused(_("Only a query that reads is allowed; %(word)s changes data.") % {"word": word})
        if token.ttype in T.Name.Placeholder and token.value not in _PLACEHOLDERS:
            raise QueryRefused(
                _(
                    "Unknown parameter %(name)s: use %(start)s and %(end)s for the window's first moment "
                    "and the moment after its last."
                )
                % {"name": token.value, "start": "%(start)s", "end": "%(end)s"}
            )
        recent = [*recent[-2:], word]
    return tokens


# How each style writes a placeholder, and whether a literal "%" must be doubled.
STYLES = {
    "pyformat": (lambda name: f"%({name})s", True),  # psycopg, PyMySQL
    "named": (lambda name: f":{name}", False),  # sqlite3
    "qmark": (lambda name: "?", False),
}


def prepare(sql: str, style: str) -> Prepared:
    """Check *sql* and translate its placeholders to *style* (``pyformat``, ``named``,
    ``qmark``); a trailing ``;`` is dropped and the text ends with a newline, so a
    trailing ``--`` comment cannot swallow anything a driver appends."""
    placeholder, double_percent = STYLES[style]
    tokens = check(sql)
    # Drop the trailing ";" (a cursor declaration or a sub-query cannot hold it).
    meaningful = [i for i, t in enumerate(tokens) if not t.is_whitespace and t.ttype not in T.Comment]
    if meaningful and tokens[meaningful[-1]].value == ";":
        del tokens[meaningful[-1]]
    parts: list[str] = []
    order: list[str] = []
    for token in tokens:
        if token.ttype in T.Name.Placeholder and token.value in _PLACEHOLDERS:
            name = _PLACEHOLDERS[token.value]
            order.append(name)
            parts.append(placeholder(name))
        elif double_percent:
            parts.append(token.value.replace("%", "%%"))
        else:
            parts.append(token.value)
    return Prepared("".join(parts).strip() + "\n", style, tuple(order))


def uses_window(sql: str) -> set[str]:
    """Which of the two parameters the (checked) query uses."""
    return {_PLACEHOLDERS[t.value] for t in check(sql) if t.ttype in T.Name.Placeholder and t.value in _PLACEHOLDERS}
