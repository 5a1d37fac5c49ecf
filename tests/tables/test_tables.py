"""Every column of every Parquet table is described once (gradscope.tables), and the description
reaches the files (field metadata), `gradscope schema` and the documentation (tables_markdown)."""

import ast
import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gradscope import artifacts, data, layout, tables
from gradscope.cli import main
from support.workflow import REPO


# Each table of the registry and the type dicts its columns come from, in file order.
SOURCES = {
    "dataset_train": [tables.DATASET], "dataset_test": [tables.DATASET],
    "metrics": [tables.METRICS], "metrics_partial": [tables.METRICS], "dynamics": [tables.DYNAMICS],
    "examples": [tables.EXAMPLES, tables.EXAMPLES_PER_RUN], "curvature": [tables.CURVATURE],
    "detections": [tables.DETECTIONS], "evaluation": [tables.EVALUATION], "groups": [tables.GROUPS],
    "group_pairs": [tables.GROUP_PAIRS], "group_losses": [tables.GROUP_LOSSES], "loss_changes": [tables.LOSS_CHANGES],
    "per_example": [tables.PER_EXAMPLE], "timeline_events": [tables.TIMELINE_EVENTS],
    "timeline_links": [tables.TIMELINE_LINKS], "influence_top": [tables.INFLUENCE_TOP],
    "influence_contributions": [tables.INFLUENCE_CONTRIBUTIONS], "progress": [tables.PROGRESS],
    "sweep_runs": [tables.SWEEP_RUNS], "sweep_detectors": [tables.SWEEP_DETECTORS],
    "interventions": [tables.INTERVENTION_RUNS], "effects": [tables.EFFECTS],
}


def type_dicts() -> dict[str, dict]:
    """Every type dict of gradscope.tables: an upper-case name whose values are Arrow types or type patterns."""
    return {name: value for name, value in vars(tables).items() if name.isupper() and not name.startswith("_")
            and isinstance(value, dict) and value
            and all(isinstance(v, (pa.DataType, str)) for v in value.values())}


def test_registry_covers_every_type_dict_with_a_description_per_column():
    assert set(tables.TABLES) == set(SOURCES)
    for name, sources in SOURCES.items():
        t = tables.TABLES[name]
        want = [(c, tables.type_text(v)) for d in sources for c, v in d.items()]
        assert [(c.name, c.type) for c in t.columns] == want, name
        assert all(c.description.strip() for c in t.columns), name
        assert t.doc.strip() and t.path.endswith(".parquet"), name
    used = {id(d) for sources in SOURCES.values() for d in sources}
    assert {n for n, d in type_dicts().items() if id(d) not in used} == set()
    assert artifacts.METRICS is tables.METRICS and artifacts.TABLES is tables.TABLES  # the writers' names still work


def test_a_missing_or_stray_description_is_an_error():
    types = {"step": pa.int64(), "loss": pa.float64()}
    assert [c.name for c in tables.described("t", "p", "A row.", types, {"step": "s", "loss": "l"}).columns] == \
        ["step", "loss"]
    with pytest.raises(ValueError, match="without a description: \\['loss'\\]"):
        tables.described("t", "p", "A row.", types, {"step": "s", "loss": " "})
    with pytest.raises(ValueError, match="does not have: \\['acc'\\]"):
        tables.described("t", "p", "A row.", types, {"step": "s", "loss": "l", "acc": "a"})


def test_paths_are_the_layouts_patterns_under_the_results_folder():
    assert tables.TABLES["metrics"].path == "runs/{experiment}/{run}/train/metrics.parquet"
    patterns = {Path(p).relative_to(layout.RESULTS).as_posix() for d in (layout.RUN, layout.SWEEP, layout.DATASET)
                for p in d.values() if p.endswith(".parquet")}
    assert {t.path for t in tables.TABLES.values()} == patterns  # every Parquet artifact of the layout, no other
    for t in tables.TABLES.values():
        assert tables.table_for_path(f"/tmp/results/{t.path}".replace("{", "").replace("}", "")) is t, t.name
    assert tables.table_for_path("elsewhere/run/examples/step=3/part-0.parquet").name == "examples"
    assert tables.table_for_path("elsewhere/part-0.parquet") is None  # examples or curvature: not said
    assert tables.table_for_path("notes.parquet") is None


def _write_calls(source: str) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "write_parquet"]


def test_every_writer_in_the_package_names_its_table():
    calls = {path: _write_calls(path.read_text()) for path in (REPO / "src" / "gradscope").rglob("*.py")}
    found = [f"{p.relative_to(REPO)}:{c.lineno}" for p, cs in calls.items() for c in cs
             if "table" not in {k.arg for k in c.keywords}]
    assert sum(map(len, calls.values())) >= 10 and not found, f"write_parquet without table=: {found}"
    assert len(_write_calls("artifacts.write_parquet(df, path, artifacts.METRICS, run_id=r)")) == 1  # what it catches


def _descriptions(path) -> dict[str, str]:
    return {f.name: f.metadata[b"description"].decode() for f in pq.read_schema(path) if f.metadata}


def test_written_tables_carry_the_registrys_descriptions(tmp_path):
    from gradscope import train

    rows = [{c: 0.5 for c in artifacts.METRICS} | {"step": s, "clipped": False} for s in (0, 10)]
    train._write_metrics(rows, tmp_path / "metrics.parquet", "e/r", {"lr": 0.1})
    assert _descriptions(tmp_path / "metrics.parquet") == tables.TABLES["metrics"].descriptions
    assert pq.read_schema(tmp_path / "metrics.parquet").field("step").metadata[b"description"].startswith(b"Training step")

    # the dataset writer: dense inputs (x, clean_label) and token pairs (a, b), each split its own table
    for generator in ({"generator": "planted_flips", "planted_flips": {"n_train": 6, "n_test": 3, "n_features": 4}},
                      {"generator": "modular", "modular": {"p": 5}}):
        train_df, test_df, meta = data.generate(generator)
        folder = tmp_path / generator["generator"]
        data.write_dataset(train_df, test_df, meta, folder / "train.parquet", folder / "test.parquet", folder / "meta.json")
        for split in ("train", "test"):
            registry = tables.TABLES[f"dataset_{split}"]
            written = _descriptions(folder / f"{split}.parquet")
            assert written == {c: registry.descriptions[c] for c in pq.read_schema(folder / f"{split}.parquet").names}
            assert ("x" in written) == (generator["generator"] == "planted_flips") and ("a" in written) != ("x" in written)
    x_type = tables.type_text(pq.read_schema(tmp_path / "planted_flips" / "train.parquet").field("x").type)
    assert x_type == tables.DATASET["x"].format(dim=4)


def test_examples_table_keeps_its_types_and_file_metadata_and_still_reads(tmp_path):
    columns = tables.examples_columns(8, "float16", 3)
    df = pd.DataFrame({**{c: [0, 1] for c in tables.EXAMPLES}, "split": ["train", "test"],
                       "correct": [True, False], "planted": [False, True],
                       "grad_proj": [[0.5] * 8] * 2, "layer_grad_norm": [[1.0] * 3] * 2})
    plain, described = tmp_path / "plain" / "step=0" / "part-0.parquet", tmp_path / "ex" / "step=0" / "part-0.parquet"
    artifacts.write_parquet(df, plain, columns, run_id="e/r", config={"k": 1})
    artifacts.write_parquet(df, described, columns, table="examples", run_id="e/r", config={"k": 1})
    before, after = pq.read_schema(plain), pq.read_schema(described)
    assert after.metadata == before.metadata  # the file-level key-value metadata is unchanged
    assert [(f.name, f.type) for f in after] == [(f.name, f.type) for f in before]
    assert _descriptions(described) == tables.TABLES["examples"].descriptions and _descriptions(plain) == {}
    assert tables.type_text(after.field("grad_proj").type) == tables.EXAMPLES_PER_RUN["grad_proj"].replace(
        "float or ", "").format(proj_dim=8)
    assert tables.type_text(after.field("layer_grad_norm").type) == \
        tables.EXAMPLES_PER_RUN["layer_grad_norm"].format(n_layers=3)
    assert tables.type_text(pa.list_(pa.float64())) == "list<double>" == tables.TABLES["curvature"].columns[1].type
    assert tables.type_text(pa.map_(pa.string(), pa.float64())) == "map<string, double>"
    pd.testing.assert_frame_equal(pd.read_parquet(described), pd.read_parquet(plain))
    assert artifacts.read_partitions(described.parent.parent)["step"].tolist() == [0, 0]
    got = duckdb.sql(f"select split, grad_norm from '{tmp_path}/ex/*/*.parquet' order by split").fetchall()
    assert got == [("test", 1.0), ("train", 0.0)]
    with pytest.raises(ValueError, match="not described"):
        artifacts.write_parquet(df.assign(extra=1), tmp_path / "x.parquet", {**columns, "extra": pa.int64()},
                                table="examples")


def test_an_inferred_table_describes_its_fixed_columns(tmp_path):
    runs = pd.DataFrame({"run_id": ["e/wd~1_seed~0"], "run": ["wd~1_seed~0"], "wd": [1.0], "optimizer": ["adamw"],
                         "final_test_acc": [0.9]})
    path = tmp_path / "runs.parquet"
    artifacts.write_parquet(runs, path, None, table="sweep_runs", run_id="e", config={"experiment": "e"})
    assert _descriptions(path) == tables.TABLES["sweep_runs"].descriptions  # grid and headline columns: none
    written = pq.read_schema(path)
    assert [(c.name, c.type) for c in tables.TABLES["sweep_runs"].columns] == \
        [(c, tables.type_text(written.field(c).type)) for c in tables.SWEEP_RUNS]  # the inferred types, as registered
    assert set(pq.read_schema(path).metadata) == {b"gradscope.schema_version", b"gradscope.run_id", b"gradscope.config"}
    assert pd.read_parquet(path).equals(runs)


def test_schema_lists_every_table():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    for t in tables.TABLES.values():
        assert re.search(rf"^{t.name} +{re.escape(t.path)}$", result.output, re.M), t.name
    assert "One row per logged step" in result.output


def test_schema_of_one_table_prints_every_column():
    result = CliRunner().invoke(main, ["schema", "examples"])
    assert result.exit_code == 0, result.output
    assert tables.TABLES["examples"].path in result.output and "Hive partition" in result.output
    for c in tables.TABLES["examples"].columns:
        assert re.search(rf"^{c.name} +{re.escape(c.type)} +{re.escape(c.description)}$", result.output, re.M), c.name


def test_schema_of_an_unknown_table_names_the_known_ones():
    result = CliRunner().invoke(main, ["schema", "metric"])
    assert result.exit_code != 0
    assert "unknown table 'metric'" in result.output and "metrics, metrics_partial" in result.output
    missing = CliRunner().invoke(main, ["schema", "nowhere/x.parquet"])
    assert missing.exit_code != 0 and "no such file" in missing.output


def test_schema_of_a_file_reads_its_field_metadata_else_the_registry(tmp_path):
    own = tmp_path / "some" / "anything.parquet"  # a path no table matches: the descriptions can only come from the file
    artifacts.write_parquet(pd.DataFrame({"detector": ["el2n"], "step": [3], "n_flagged": [2], "auroc": [0.5],
                                          "average_precision": [0.5], "precision_at_k": [0.5], "recall_at_k": [0.5],
                                          "precision": [0.5], "recall": [0.5]}),
                            own, tables.EVALUATION, table="evaluation")
    result = CliRunner().invoke(main, ["schema", str(own)])
    assert result.exit_code == 0, result.output
    assert "not a table gradscope's registry knows" in result.output
    assert re.search(r"^precision_at_k +double +Precision of the k top scores \(k = planted count\)\.$", result.output,
                     re.M)
    assert CliRunner().invoke(main, ["schema", str(own.parent)]).output == result.output  # a folder: its first file

    old = tmp_path / "runs" / "e" / "r" / "signals" / "group_pairs.parquet"  # written before the descriptions
    old.parent.mkdir(parents=True)
    pq.write_table(pa.table({"cosine": [-0.5], "mystery": [1]}), old)
    result = CliRunner().invoke(main, ["schema", str(old)])
    assert result.exit_code == 0, result.output
    assert "the group_pairs table" in result.output and "from the registry" in result.output
    assert re.search(r"^cosine +double +Cosine of the groups' mean projected gradients\.$", result.output, re.M)
    assert re.search(r"^mystery +int64$", result.output, re.M)

    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    result = CliRunner().invoke(main, ["schema", str(bad)])
    assert result.exit_code != 0 and "not a readable Parquet file" in result.output


def _sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^### (\w+)$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_markdown_has_every_column_of_every_table_and_no_links():
    md = artifacts.tables_markdown()
    sections = _sections(md)
    assert list(sections) == list(tables.TABLES)
    for t in tables.TABLES.values():
        body = sections[t.name]
        assert f"`{t.path}`" in body and t.doc in body
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        assert [r.split(" | ")[0] for r in rows] == [f"| `{c.name}`" for c in t.columns], t.name
        for row in rows:  # three cells: no unescaped pipe inside one
            assert len(re.findall(r"(?<!\\)\|", row)) == 4, row
    prose = re.sub(r"`[^`]*`", "", md)  # outside code spans: no link, no autolink, no HTML tag
    assert "](" not in prose and "http" not in prose and "www." not in prose and not re.search(r"<[A-Za-z/!]", prose)
    assert "u'Hu / \\|u\\|²" in md  # a pipe in a description is escaped
    assert artifacts.tables_markdown(level=2).startswith("## dataset_train\n")
