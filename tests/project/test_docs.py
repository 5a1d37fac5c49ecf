"""The newcomer's pages: the README fits a screen and links only inside the repository; the docs
site builds with `mkdocs build --strict`, its reference pages are generated from the code (a changed
schema default changes the page), its reading recipes run as written, and it loads in headless
chromium without errors."""

import copy
import functools
import http.server
import importlib.util
import re
import subprocess
import sys
import threading

import pytest

from gradscope import artifacts, config
from support.workflow import REPO

DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def hooks():
    spec = importlib.util.spec_from_file_location("gradscope_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_keys(schema: dict) -> list[str]:
    """Every leaf key of the config schema, dotted, experiments' blocks under experiments.NAME."""
    h = hooks()
    out, todo = [], [("", schema)]
    todo.append(("experiments.NAME", h._resolve(schema["properties"]["experiments"]["additionalProperties"], schema)))
    while todo:
        prefix, node = todo.pop()
        for key, raw in node.get("properties", {}).items():
            child = h._resolve(raw, schema)
            name = f"{prefix}.{key}" if prefix else key
            (todo.append((name, child)) if child.get("type") == "object" and child.get("properties") else out.append(name))
    return out


# ---- the README ---------------------------------------------------------------------------------
def test_readme_fits_a_screen_and_reaches_your_model_in_the_first():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    first_screen = "\n".join(lines[:50])
    assert "## Your model and your data" in first_screen and "factory:" in "\n".join(lines[:70])


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *sorted(p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md"))])
def test_every_link_stays_inside_the_repository(page):
    path = REPO / page
    for target in LINK.findall(path.read_text()):
        assert not re.match(r"[a-z]+:", target), f"{page} links outside the repository: {target}"
        file = (path.parent / target.split("#")[0]).resolve() if not target.startswith("#") else path
        generated = file.is_relative_to(DOCS / "reference") or file == DOCS / "changelog.md"
        assert file.is_relative_to(REPO), f"{page} links outside the repository: {target}"
        assert file.exists() or generated, f"{page} links to {target}, which does not exist"


# ---- generated references -----------------------------------------------------------------------
def test_configuration_reference_lists_every_key_with_the_schemas_default():
    schema = config.load_schema()
    page = hooks().render_config_reference(schema)
    for key in schema_keys(schema):
        assert f"`{key}`" in page, key
    changed = copy.deepcopy(schema)
    changed["properties"]["dashboard"]["properties"]["max_examples"]["default"] = 4321
    new = hooks().render_config_reference(changed)
    row = next(line for line in new.splitlines() if line.startswith("| `dashboard.max_examples`"))
    assert "`4321`" in row and "`4321`" not in page


def test_cli_and_api_references_cover_every_command_and_module():
    from gradscope.cli import main

    h = hooks()
    page = h.render_cli_reference(main)
    for name in main.commands:
        assert f"## `gradscope {name}`" in page
    modules = h.public_modules()
    assert {"gradscope.recorder", "gradscope.operators", "gradscope.layout", "gradscope.progress"} <= set(modules)
    pages = h.render_api_pages(modules)
    assert all(f"reference/api/{m}.md" in pages and f"::: {m}" in pages[f"reference/api/{m}.md"] for m in modules)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                             "-d", str(out)], capture_output=True, text=True, env={**__import__("os").environ,
                                                                                   "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


@pytest.mark.slow
def test_site_builds_strict_with_the_generated_pages(site):
    reference = (site / "reference" / "configuration" / "index.html").read_text()
    default = config.load_schema()["$defs"]["curvature"]["properties"]["lanczos_iters"]["default"]
    assert "curvature.lanczos_iters" in reference and f"<code>{default}</code>" in reference
    tables = (site / "artifacts" / "index.html").read_text()
    for table in artifacts.TABLES.values():
        assert table.path in tables and all(column[0] in tables for column in table.columns), table.name
    assert "gradscope validate" in (site / "reference" / "cli" / "index.html").read_text()
    recorder = (site / "reference" / "api" / "gradscope.recorder" / "index.html").read_text()
    assert "before_update" in recorder and "after_update" in recorder
    assert "Changelog" in (site / "changelog" / "index.html").read_text()
    outside = {m for page in site.rglob("*.html") for m in re.findall(r'(?:href|src)="(https?://[^"]*)"', page.read_text())}
    assert not outside, f"the site loads or links outside itself: {sorted(outside)[:5]}"


def test_site_loads_in_a_browser_without_errors(site, browser):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        browser.get_log("browser")  # drop what earlier tests left
        for page in ("", "reference/configuration/", "artifacts/", "reference/api/gradscope.recorder/"):
            browser.get(base + page)
            assert "gradscope" in browser.title
            assert browser.find_elements("css selector", "nav.md-nav a"), page  # the material theme drew its nav
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        server.shutdown()


# ---- the reading recipes, as written ------------------------------------------------------------
def test_reading_recipes_run_on_a_results_folder(done, tmp_path, monkeypatch, capsys):
    """docs/results.md's python blocks, in order, in one namespace, then the README's, on the tiny run: its `flips`
    experiment stands in for the default's `opposing` (a link, so the paths are as written)."""
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    for entry in (done / "results").iterdir():
        if entry.name != "runs":
            (results / entry.name).symlink_to(entry)
    for run_dir in (done / "results" / "runs").iterdir():
        (results / "runs" / run_dir.name).symlink_to(run_dir)
    (results / "runs" / "opposing").symlink_to(done / "results" / "runs" / "flips")
    monkeypatch.chdir(tmp_path)
    recipes = re.findall(r"```python\n(.*?)```", (DOCS / "results.md").read_text().split("## The library")[0], flags=re.S)
    readme = [b for b in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S) if "open_run" in b]
    assert len(recipes) >= 5 and len(readme) == 1
    recipes += readme
    namespace: dict = {}
    for block in recipes:
        exec(compile(block, "docs/results.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "auroc" in printed and "mean_grad_norm" in printed and "best_auroc" in printed
