"""mkdocs hooks: the reference pages are generated from the code at every build, so they cannot drift.

- `reference/configuration.md`: every config key from the JSON schema (the one source of defaults);
- `reference/cli.md`: every command and option from the click group;
- `reference/api/*.md`: one mkdocstrings page per public module of the package (a new module gets
  its page with no edit here);
- `changelog.md`: the repository's CHANGELOG.md;
- in any page, the marker `<!-- gradscope:tables -->` becomes every Parquet table's columns
  (`gradscope.artifacts.tables_markdown`, from the artifact schemas), and
  `<!-- gradscope:default-config -->` the embedded default config, `config/config.yaml`.

`mkdocs build --strict` (tests/project/test_docs.py) runs these; `render_*` are plain functions of their
input, so a test can check that a changed default changes the page.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLES_MARKER = "<!-- gradscope:tables -->"
DEFAULT_CONFIG_MARKER = "<!-- gradscope:default-config -->"


# ---- configuration --------------------------------------------------------------------------
def _resolve(node: dict, schema: dict) -> dict:
    """`node` with its $ref followed (keys beside the $ref, such as a default, win)."""
    if "$ref" not in node:
        return node
    target = schema
    for part in node["$ref"].lstrip("#/").split("/"):
        target = target[part]
    return {**_resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(v) -> str:
    return "`" + json.dumps(v) + "`" if v is not None else "`null`"


def _type(node: dict) -> str:
    t = node.get("type")
    if t is None and ("oneOf" in node or "anyOf" in node):
        t = [_type(n) for n in node.get("oneOf", node.get("anyOf", []))]
    if isinstance(t, list):
        return " or ".join(str(x) for x in t)
    if t == "array" and isinstance(node.get("items"), dict) and node["items"].get("type"):
        return f"array of {_type(node['items'])}"
    return t or "any"


def _allowed(node: dict) -> str:
    parts = []
    if "enum" in node:
        parts.append(", ".join(_value(v) for v in node["enum"]))
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    return "; ".join(parts)


def _rows(node: dict, schema: dict, prefix: str, selector: str | None = None) -> tuple[list, list]:
    """(rows of leaf keys under `prefix`, [(prefix, object node)] of nested blocks to render apart)."""
    rows, blocks = [], []
    for key, raw in node.get("properties", {}).items():
        child = _resolve(raw, schema)
        name = f"{prefix}.{key}" if prefix else key
        when = ""
        if "x-when" in raw or "x-when" in child:
            sel = node.get("x-selector", selector)
            when = f"{sel} in " + ", ".join(_value(v) for v in raw.get("x-when", child.get("x-when")))
        if child.get("type") == "object" and child.get("properties"):
            blocks.append((name, child, when))
            continue
        rows.append((name, _type(child), _value(child["default"]) if "default" in child else "required"
                     if key in node.get("required", []) else "", _allowed(child), when, child.get("description", "")))
    return rows, blocks


def _table(rows) -> list[str]:
    """key | default | meaning, the type, the allowed values and when the key applies after the meaning."""
    out = ["| key | default | meaning |", "|---|---|---|"]
    for name, type_, default, allowed, when, description in rows:
        facts = [f"*{type_}*"] + ([f"allowed: {allowed}"] if allowed else []) + ([f"applies when {when}"] if when else [])
        out.append(f"| `{name}` | {_cell(default)} | {_cell(description)} ({'; '.join(_cell(f) for f in facts)}) |")
    return out


def render_config_reference(schema: dict) -> str:
    """The configuration reference: one table per block, in the schema's order."""
    out = ["# Configuration reference", "",
           "Generated from `src/gradscope/schemas/config.schema.yaml` at every docs build: the schema is the",
           "one place a default lives, so this page changes when it does. How config files combine, and",
           "what a config looks like: [Configuration](../configuration.md).", "",
           _cell(schema.get("description", "")), ""]
    todo = [("", schema, "")]
    experiment = _resolve(schema["properties"]["experiments"]["additionalProperties"], schema)
    seen_experiment = False
    while todo:
        prefix, node, when = todo.pop(0)
        rows, blocks = _rows(node, schema, prefix)
        title = f"`{prefix}`" if prefix else "Top level"
        out += [f"## {title}", ""]
        if prefix and node.get("description"):
            out += [_cell(node["description"]), ""]
        if when:
            out += [f"Applies when {when}.", ""]
        if rows:
            out += _table(rows) + [""]
        todo = blocks + todo
        if not prefix and not seen_experiment:  # every experiment has the same blocks
            seen_experiment = True
            todo.append(("experiments.NAME", experiment, ""))
    return "\n".join(out) + "\n"


# ---- CLI ------------------------------------------------------------------------------------
def render_cli_reference(group) -> str:
    """Every command of a click group: usage, help and options, as `--help` prints them."""
    import click

    out = ["# Command line reference", "",
           "Generated from the click commands (`src/gradscope/cli.py`) at every docs build; "
           "`gradscope COMMAND --help` prints the same.", ""]
    with click.Context(group, info_name="gradscope") as ctx:
        out += ["```text", group.get_help(ctx), "```", ""]
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            with click.Context(cmd, info_name=name, parent=ctx) as sub:
                out += [f"## `gradscope {name}`", "", "```text", cmd.get_help(sub), "```", ""]
    return "\n".join(out) + "\n"


# ---- Python API -----------------------------------------------------------------------------
def public_modules() -> list[str]:
    """Every module of the package whose name has no leading underscore, in name order."""
    import gradscope

    names = [m.name for m in pkgutil.walk_packages(gradscope.__path__, "gradscope.")]
    return sorted(n for n in names if not any(p.startswith("_") for p in n.split(".")))


def render_api_pages(modules: list[str]) -> dict[str, str]:
    pages = {}
    index = ["# Python API", "", "Generated from the docstrings of every public module at every docs build.",
             "`import gradscope` gives `Recorder`, `open_run`, `open_results` and `analyze`; the rest is "
             "imported from its module.", "", "| module | what it is |", "|---|---|"]
    for name in modules:
        doc = (importlib.import_module(name).__doc__ or "").strip().split("\n")[0]
        index.append(f"| [`{name}`]({name}.md) | {_cell(doc)} |")
        pages[f"reference/api/{name}.md"] = f"# `{name}`\n\n::: {name}\n"
    pages["reference/api/index.md"] = "\n".join(index) + "\n"
    return pages


# ---- mkdocs entry points --------------------------------------------------------------------
def generated_pages() -> dict[str, str]:
    from gradscope import cli, config

    pages = {
        "reference/configuration.md": render_config_reference(config.load_schema()),
        "reference/cli.md": render_cli_reference(cli.main),
        "changelog.md": (REPO / "CHANGELOG.md").read_text(),
    }
    pages.update(render_api_pages(public_modules()))
    return pages


def on_files(files, config):
    from mkdocs.structure.files import File

    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    if TABLES_MARKER in markdown:
        from gradscope import artifacts

        markdown = markdown.replace(TABLES_MARKER, artifacts.tables_markdown())
    if DEFAULT_CONFIG_MARKER in markdown:
        text = (REPO / "config" / "config.yaml").read_text()
        markdown = markdown.replace(DEFAULT_CONFIG_MARKER, f"```yaml\n{text.rstrip()}\n```")
    return markdown
