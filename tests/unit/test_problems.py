"""Problem types and JSON Pointers: every type the ingest answers with is documented in the README's table, under
the anchor its URI points to; bare HTTP statuses are about:blank; pointers escape as RFC 6901 says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamproc.http.problems import BLANK, PROBLEM_DOCS, PROBLEM_TYPES, Problem, json_pointer, problem_type

README = Path(__file__).parents[2] / "README.md"


def readme_problem_types() -> dict[str, tuple[int, str]]:
    section = README.read_text().split("### Problem types", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r'^\| <a id="problem-([a-z-]+)"></a>`([a-z-]+)` \| `(\d{3})` \| (.+) \|$', section, re.M)
    assert all(anchor == name for anchor, name, _, _ in rows), "each row's anchor is its type's name"
    return {name: (int(status), meaning) for _, name, status, meaning in rows}


def test_the_readme_documents_every_problem_type_under_its_anchor() -> None:
    assert readme_problem_types() == PROBLEM_TYPES
    assert len(PROBLEM_TYPES) == 12


def test_a_problem_type_uri_points_at_its_row() -> None:
    problem = Problem(429, "Backlog Full", "stream x is over its backlog limit")
    assert problem.type == problem_type("backlog-full") == f"{PROBLEM_DOCS}#problem-backlog-full"
    assert PROBLEM_DOCS.startswith("https://")
    assert problem.body() == {"type": f"{PROBLEM_DOCS}#problem-backlog-full", "title": "Backlog Full",
                              "status": 429, "detail": "stream x is over its backlog limit"}


def test_bare_http_statuses_are_about_blank() -> None:
    assert Problem(404, "Not Found", "nothing here").type == BLANK == "about:blank"
    assert Problem(405, "Method Not Allowed", "GET only").type == BLANK


def test_a_problem_of_no_documented_type_is_refused() -> None:
    with pytest.raises(AssertionError, match="undocumented problem type 'something-new'"):
        Problem(400, "Something New", "a type nobody documented")
    with pytest.raises(AssertionError, match="documented as 429"):
        Problem(503, "Backlog Full", "the status of another type")


@pytest.mark.parametrize(("tokens", "pointer"), [
    ((), ""),
    ((0,), "/0"),
    ((1, "card_id"), "/1/card_id"),
    ((0, "tags", 2), "/0/tags/2"),
    ((0, "a/b"), "/0/a~1b"),
    ((0, "m~n"), "/0/m~0n"),
    ((0, "~1"), "/0/~01"),  # "~" first, so a literal "~1" is not read back as "/"
    ((0, ""), "/0/"),
])
def test_json_pointer_escapes_as_rfc_6901_says(tokens: tuple[str | int, ...], pointer: str) -> None:
    assert json_pointer(tokens) == pointer
