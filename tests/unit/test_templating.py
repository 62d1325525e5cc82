"""Step templates: ``{file.name}`` placeholders and dotted paths into JSON responses."""

from __future__ import annotations

import pytest

from uploader_daemon.templating import (
    MissingValueError,
    TemplateError,
    as_text,
    dig,
    references,
    references_in,
    render,
    render_text,
    render_tree,
)

VALUES: dict[str, object] = {
    "file": {"name": "report.csv", "stem": "report", "size": 1234},
    "create": {
        "id": 42,
        "fields": {"key": "uploads/report.csv", "X-Amz-Date": "20240101T000000Z"},
        "items": [{"url": "https://a.example"}, {"url": "https://b.example"}],
        "ok": True,
        "nothing": None,
    },
}


def test_a_single_placeholder_keeps_the_value_type() -> None:
    """ "{file.size}" sends a number in JSON, "{create.fields}" a mapping."""
    assert render("{file.size}", VALUES) == 1234
    assert render("{create.fields}", VALUES) == {
        "key": "uploads/report.csv",
        "X-Amz-Date": "20240101T000000Z",
    }
    assert render("{create.ok}", VALUES) is True
    assert render("{create.nothing}", VALUES) is None


def test_placeholders_inside_text_are_interpolated_as_text() -> None:
    """Anything more than one placeholder renders a string."""
    assert render("/documents/{create.id}/mark_as_uploaded", VALUES) == "/documents/42/mark_as_uploaded"
    assert render("{file.stem}-{file.size}", VALUES) == "report-1234"
    assert render(" {file.size}", VALUES) == " 1234"
    assert render("ok={create.ok}", VALUES) == "ok=true"
    assert render("[{create.nothing}]", VALUES) == "[]"


def test_structures_inside_text_render_as_compact_json() -> None:
    """A mapping interpolated into text becomes JSON, not a Python repr."""
    expected = 'f={"key":"uploads/report.csv","X-Amz-Date":"20240101T000000Z"}'
    assert expected == render("f={create.fields}", VALUES)


def test_a_template_without_placeholders_is_returned_as_is() -> None:
    """Plain text passes through."""
    assert render("/api/envio", VALUES) == "/api/envio"
    assert render("", VALUES) == ""


def test_doubled_braces_are_literal_braces() -> None:
    """{{ and }} escape a brace, also around a placeholder."""
    assert render("{{literal}}", VALUES) == "{literal}"
    assert render("{{file.name}}", VALUES) == "{file.name}"
    assert render("{{{file.name}}}", VALUES) == "{report.csv}"
    assert references("{{file.name}}") == []


@pytest.mark.parametrize(
    "template", ["{file.name", "file.name}", "a { b", "{}", "{0}", "{file name}", "{{file.name}"]
)
def test_a_stray_brace_is_an_error(template: str) -> None:
    """A brace that opens no placeholder is refused, with the way to write a literal one."""
    with pytest.raises(TemplateError, match="has a stray") as caught:
        references(template)
    assert "write {{ or }} for a literal brace" in str(caught.value)
    with pytest.raises(TemplateError, match="has a stray"):
        render(template, VALUES)


def test_references_lists_every_placeholder_in_order() -> None:
    """The config checker uses this to validate templates before anything runs."""
    assert references("/a/{create.id}/{file.name}/{create.fields.X-Amz-Date}") == [
        "create.id",
        "file.name",
        "create.fields.X-Amz-Date",
    ]


def test_references_in_walks_nested_lists_and_mappings() -> None:
    """Templates inside a JSON body are found wherever they sit; other values are ignored."""
    body = {
        "document": {"name": "{file.name}", "size": "{file.size}", "flag": False, "n": 3},
        "list": ["{create.id}", ("{target.name}",)],
    }
    assert sorted(references_in(body)) == ["create.id", "file.name", "file.size", "target.name"]


def test_dig_follows_nested_mappings_and_list_indexes() -> None:
    """Dotted paths go into mappings by key and into lists by index."""
    assert dig(VALUES, "create.items.1.url") == "https://b.example"
    assert dig(VALUES, "create.fields.X-Amz-Date") == "20240101T000000Z"
    assert dig({"a": [[1, 2], [3, 4]]}, "a.1.0") == 3


@pytest.mark.parametrize(
    ("path", "missing", "reason"),
    [
        ("create.fields.policy", "create.fields.policy", "is missing"),
        ("create.absent.deeper", "create.absent", "is missing"),
        ("create.items.5.url", "create.items.5", "is missing"),
        ("create.items.first", "create.items.first", "is missing"),
        ("create.id.value", "create.id.value", "cannot be looked up in a int"),
        ("create.nothing.x", "create.nothing.x", "cannot be looked up in a NoneType"),
    ],
)
def test_a_missing_path_names_the_full_path_down_to_the_missing_part(
    path: str, missing: str, reason: str
) -> None:
    """The error says which part of which path is absent, from the root."""
    with pytest.raises(MissingValueError) as caught:
        dig(VALUES, path)
    assert (caught.value.path, caught.value.reason) == (missing, reason)
    assert str(caught.value) == f"{missing}: {reason}"


def test_dig_prefixes_the_path_with_its_root_in_errors() -> None:
    """When digging into one response, the error still names the step it came from."""
    with pytest.raises(MissingValueError) as caught:
        dig({"fields": {}}, "fields.key", root="create")
    assert caught.value.path == "create.fields.key"


def test_rendering_a_missing_value_raises_with_its_path() -> None:
    """A template whose value an earlier response lacked fails with the full path."""
    with pytest.raises(MissingValueError, match=r"^create\.url: is missing$"):
        render("{create.url}", VALUES)
    with pytest.raises(MissingValueError, match=r"^task: is missing$"):
        render("/tasks/{task.id}", VALUES)


def test_render_text_always_returns_text() -> None:
    """URLs, header values and file names are text even when the value is a number."""
    assert render_text("{file.size}", VALUES) == "1234"
    assert render_text("{create.ok}", VALUES) == "true"
    assert render_text("{create.items.0}", VALUES) == '{"url":"https://a.example"}'


def test_render_tree_renders_every_string_and_keeps_other_values() -> None:
    """A JSON body keeps its shape; strings are rendered, numbers and booleans pass through."""
    body = {
        "document": {
            "data_file_name": "{file.name}",
            "data_file_size": "{file.size}",
            "warning_duplicate": False,
        },
        "tags": ["{file.stem}", 7, ("{create.id}",)],
        "none": None,
    }
    assert render_tree(body, VALUES) == {
        "document": {"data_file_name": "report.csv", "data_file_size": 1234, "warning_duplicate": False},
        "tags": ["report", 7, [42]],
        "none": None,
    }


def test_as_text_writes_scalars_plainly_and_structures_as_json() -> None:
    """The text form of each kind of value."""
    assert [as_text(value) for value in ("x", True, False, None, 3, 1.5, [1, "a"], {"k": 1})] == [
        "x",
        "true",
        "false",
        "",
        "3",
        "1.5",
        '[1,"a"]',
        '{"k":1}',
    ]
