"""The default run (config/config.yaml, as the README's first command runs it) writes the same tables
as the golden data in tests/golden/default_run/: every Parquet table under results/ and every JSON
file there (the summaries, manifests and data metadata), the same to the float, or, where a value
moved to another code path, within a relative 1e-6 (RTOL; ATOL for values near zero). A table or
JSON file that appears or disappears fails too.

What is compared (tests/golden/default_run/tables.json, one line per column):
- each table: its row count and its columns, in order, with their Arrow types;
- each column (a list or map column in parts: its lengths, its flattened values, a map's keys and
  items): counts of nulls, NaNs and infinities, and a digest of the exact values. A digest that
  matches means bit-identical. Where it does not, an integer, bool or string part fails (these are
  compared exactly); a float part is checked against what the golden keeps beside the digest: its
  values themselves (a part of at most FULL values), or evenly spaced samples, the sum, the sum of
  absolute values, min, max and two fixed pseudo-random projections, each with a bound that an
  elementwise difference within RTOL/ATOL can never exceed. Failing names the table, the column
  and the largest relative difference; passing without bit-identity warns with the same numbers.
- time columns are left out: support.workflow.TIMES (the wall-clock columns the rerun checks
  drop, "wall_s") and their copies under another prefix (the sweep tables' "train_wall_s").
tests/golden/default_run/summaries.json holds every JSON file's leaves (the same TIMES keys left
out, and JSON_TIMES: the influence summary's "seconds"): numbers within RTOL/ATOL (integers
exactly), everything else exactly.

The golden data was made on CPU (device: auto finds no GPU) from the committed code; a GPU run
differs. When a change to the numbers is intended, regenerate and commit the golden data:

    python tests/workflow/test_default_tables.py --regenerate            # runs the default workflow (~1.5 min)
    python tests/workflow/test_default_tables.py --from path/to/results  # describes an existing default run

(run with the virtualenv active, from the repository root or anywhere).
"""

import argparse
import hashlib
import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script: tests/, for the helpers in tests/support/
from support.workflow import REPO, TIMES, copy_workflow, snakemake  # noqa: E402

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

GOLDEN = REPO / "tests" / "golden" / "default_run"
RTOL, ATOL = 1e-6, 1e-9
FULL = 64      # a part with at most this many values keeps them all
SAMPLES = 8    # otherwise: this many evenly spaced values
PROJECTIONS = 2
BLOCKS = 32    # and projection 0 of each of up to this many contiguous blocks (a change in one value shows)


# The influence summary's "seconds" (pipeline.influence: its own run time) is the one time that
# TIMES, a list of table columns, does not name.
JSON_TIMES = {"seconds"}


def is_time(name: str, json_key: bool = False) -> bool:
    """A wall-clock column or JSON key: one of TIMES, or one of them under a prefix (train_wall_s);
    among JSON keys also JSON_TIMES."""
    return name in TIMES or any(name.endswith("_" + t) for t in TIMES) or (json_key and name in JSON_TIMES)


# ---- describing a results folder ---------------------------------------------------------------

def _enc(x):
    """A float for JSON: non-finite values as strings (plain JSON has no NaN), None for null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _dec(x):
    return float("nan") if x is None else float(x)


def _weights(n: int, k: int) -> np.ndarray:
    """Fixed pseudo-random weights in [-1, 1), the same on every machine (integer hashing)."""
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(40503 * (k + 1))) % np.uint64(2**32)
    h = (h ^ (h >> np.uint64(13))) * np.uint64(1274126177) % np.uint64(2**32)
    return h.astype(np.float64) / 2**31 - 1.0


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()[:20]


def _parts(arr: pa.Array, name: str):
    """(part name, array) for each leaf of a column: a list's lengths and flattened values, a map's
    lengths, keys and items, a struct's fields."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if pa.types.is_map(t):
        lengths = np.diff(np.asarray(arr.offsets)).astype(np.int64)
        lengths[np.asarray(arr.is_null())] = -1
        yield f"{name}#len", pa.array(lengths)
        offsets = np.asarray(arr.offsets)
        keys, items = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).flatten()
        yield from _parts(keys, f"{name}{{key}}")
        yield from _parts(items, f"{name}{{item}}")
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield f"{name}#len", pc.fill_null(pc.list_value_length(arr), -1)
        yield from _parts(arr.flatten(), f"{name}[]")
    elif pa.types.is_struct(t):
        for field, child in zip(t, arr.flatten()):
            yield from _parts(child, f"{name}.{field.name}")
    else:
        yield name, arr


def _block_edges(n: int) -> list[int]:
    return [int(e) for e in np.linspace(0, n, min(BLOCKS, max(n // 8, 1)) + 1).round()]


def _sample_index(n: int) -> list[int]:
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, SAMPLES)}) if n else []


def describe_part(arr: pa.Array) -> dict:
    t, n = arr.type, len(arr)
    nulls = np.asarray(arr.is_null())
    out = {"n": n, "null": int(nulls.sum())}
    if pa.types.is_null(t):
        return {"kind": "null", **out}
    if pa.types.is_floating(t):
        raw = np.asarray(pc.fill_null(arr, 0).to_numpy(zero_copy_only=False))
        x = raw.astype(np.float64)
        x[nulls] = np.nan
        nan, pinf, ninf = np.isnan(x) & ~nulls, np.isposinf(x), np.isneginf(x)
        fin = np.where(np.isfinite(x), x, 0.0)
        out.update(kind="float", nan=int(nan.sum()), posinf=int(pinf.sum()), neginf=int(ninf.sum()),
                   sha=_digest(raw.tobytes(), nulls.tobytes()), sum=float(fin.sum()), abs=float(np.abs(fin).sum()),
                   min=_enc(fin[np.isfinite(x)].min()) if np.isfinite(x).any() else None,
                   max=_enc(fin[np.isfinite(x)].max()) if np.isfinite(x).any() else None)
        proj = [_weights(n, k) * fin for k in range(PROJECTIONS)]
        out.update(proj=[float(p.sum()) for p in proj], pabs=[float(np.abs(p).sum()) for p in proj])
        if n > FULL:
            edges = _block_edges(n)
            out.update(bproj=[float(f"{proj[0][a:b].sum():.10g}") for a, b in zip(edges, edges[1:])],
                       babs=[float(f"{np.abs(proj[0][a:b]).sum():.10g}") for a, b in zip(edges, edges[1:])])
        idx = list(range(n)) if n <= FULL else _sample_index(n)
        out.update(idx=None if n <= FULL else idx, val=[None if nulls[i] else _enc(x[i]) for i in idx])
        return out
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        zero = pa.scalar(False if pa.types.is_boolean(t) else 0, type=t)
        x = np.asarray(pc.fill_null(arr, zero).to_numpy(zero_copy_only=False)).astype(np.int64)
        out.update(kind="int", sha=_digest(x.tobytes(), nulls.tobytes()),
                   sum=int(x[~nulls].sum()), min=int(x[~nulls].min()) if (~nulls).any() else None,
                   max=int(x[~nulls].max()) if (~nulls).any() else None)
    else:  # strings and anything else: compared as text
        x = [None if v is None else str(v) for v in arr.to_pylist()]
        out.update(kind="str", sha=_digest(json.dumps(x).encode()), distinct=len(set(x)))
    idx = list(range(n)) if n <= FULL else _sample_index(n)
    out.update(idx=None if n <= FULL else idx, val=[None if nulls[i] else x[i] for i in idx])
    if out["kind"] == "int":
        out["val"] = [None if v is None else int(v) for v in out["val"]]
    return out


def describe_table(path: Path) -> dict:
    table = pq.read_table(path)
    desc = {"rows": table.num_rows, "columns": [[f.name, str(f.type)] for f in table.schema], "parts": {}}
    for field, column in zip(table.schema, table.columns):
        if is_time(field.name):
            continue
        for part, arr in _parts(column.combine_chunks(), field.name):
            desc["parts"][part] = describe_part(arr)
    return desc


def _leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not is_time(str(k), json_key=True):
                yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        if not obj:
            yield prefix + "[]", "<empty list>"
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, _enc(obj) if isinstance(obj, float) else obj


def describe(results: Path) -> tuple[dict, dict]:
    """The golden description of a results folder: (tables, JSON summaries), keyed by path under it."""
    results = Path(results)
    tables = {p.relative_to(results).as_posix(): describe_table(p) for p in sorted(results.rglob("*.parquet"))}
    summaries = {p.relative_to(results).as_posix(): dict(_leaves(json.loads(p.read_text())))
                 for p in sorted(results.rglob("*.json"))}
    return tables, summaries


def _dump(obj: dict, path: Path) -> None:
    """Two levels of keys on their own lines, each leaf object on one line (small, readable diffs)."""
    lines = ["{"]
    outer = list(obj.items())
    for i, (name, inner) in enumerate(outer):
        lines.append(f" {json.dumps(name)}: {{")
        items = list(inner.items())
        for j, (key, value) in enumerate(items):
            if key == "parts":
                lines.append('  "parts": {')
                parts = list(value.items())
                for m, (part, desc) in enumerate(parts):
                    comma = "," if m < len(parts) - 1 else ""
                    lines.append(f"   {json.dumps(part)}: {json.dumps(desc, separators=(',', ':'))}{comma}")
                lines.append("  }" + ("," if j < len(items) - 1 else ""))
            else:
                comma = "," if j < len(items) - 1 else ""
                lines.append(f"  {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}{comma}")
        lines.append(" }" + ("," if i < len(outer) - 1 else ""))
    lines.append("}")
    path.write_text("\n".join(lines) + "\n")


def write_golden(results: Path, golden: Path = GOLDEN) -> None:
    tables, summaries = describe(results)
    golden.mkdir(parents=True, exist_ok=True)
    _dump(tables, golden / "tables.json")
    _dump(summaries, golden / "summaries.json")


def load_golden(golden: Path = GOLDEN) -> tuple[dict, dict]:
    return (json.loads((golden / "tables.json").read_text()), json.loads((golden / "summaries.json").read_text()))


# ---- comparing ----------------------------------------------------------------------------------

def _check(name: str, a: float, b: float, bound: float) -> tuple[str, float, float, float, bool]:
    """(check, golden, now, relative difference, within tolerance): the relative difference is the
    difference over bound / RTOL (|golden| for a value, the sum of |values| for sums and projections,
    plus ATOL's share), so that it is within tolerance exactly when it is at most RTOL."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return name, a, b, 0.0, True
    if not (math.isfinite(a) and math.isfinite(b)):
        return name, a, b, math.inf, False
    diff = abs(b - a)
    return name, a, b, (diff / bound * RTOL if bound > 0 else math.inf), diff <= bound


def _rel(a: float, b: float) -> float:
    """A JSON value's relative difference, on the same scale as _check's."""
    return _check("", a, b, RTOL * abs(a) + ATOL)[3]


def _float_checks(g: dict, v: dict) -> list[tuple[str, float, float, float, bool]]:
    """The checks of a float part whose digest differs. Each bound holds whenever every value is
    within RTOL/ATOL of the golden one, so that only a difference beyond them fails."""
    checks, slack = [], 1e-12  # summation order
    n_fin = g["n"] - g["null"] - g["nan"] - g["posinf"] - g["neginf"]
    gi, vi = g["idx"] or list(range(len(g["val"]))), v["idx"] or list(range(len(v["val"])))
    if gi == vi:
        for i, a, b in zip(gi, g["val"], v["val"]):
            a, b = _dec(a), _dec(b)
            checks.append(_check(f"value {i}", a, b, RTOL * abs(a) + ATOL))
    for key in ("sum", "abs"):
        checks.append(_check(key, g[key], v[key], (RTOL + slack) * g["abs"] + ATOL * n_fin))
    if g["min"] is not None and v["min"] is not None:
        scale = max(abs(_dec(g["min"])), abs(_dec(g["max"])))
        for key in ("min", "max"):
            checks.append(_check(key, _dec(g[key]), _dec(v[key]), RTOL * scale + ATOL))
    for k, (a, b, pabs) in enumerate(zip(g["proj"], v["proj"], g["pabs"])):
        checks.append(_check(f"projection {k}", a, b,
                             (RTOL + slack) * pabs + ATOL * float(np.abs(_weights(g["n"], k)).sum())))
    if "bproj" in g and "bproj" in v:
        edges, w = _block_edges(g["n"]), np.abs(_weights(g["n"], 0))
        for j, (a, b, babs) in enumerate(zip(g["bproj"], v["bproj"], g["babs"])):
            bound = (RTOL + 2e-10) * babs + ATOL * float(w[edges[j]:edges[j + 1]].sum())  # 10 digits kept
            checks.append(_check(f"projection of values {edges[j]}-{edges[j + 1] - 1}", a, b, bound))
    return checks


def compare_part(where: str, g: dict, v: dict) -> tuple[str | None, str | None]:
    """(problem, note) for one part: a problem fails the test; a note says it is within tolerance
    but not bit-identical."""
    if g["kind"] != v["kind"]:
        return f"{where}: kind {v['kind']}, golden {g['kind']}", None
    counts = [k for k in ("n", "null", "nan", "posinf", "neginf", "distinct") if g.get(k) != v.get(k)]
    if counts:
        return f"{where}: " + ", ".join(f"{k} {v.get(k)} (golden {g.get(k)})" for k in counts), None
    if g["kind"] == "null" or g["sha"] == v["sha"]:
        return None, None
    if g["kind"] != "float":
        diff = [(i, a, b) for i, a, b in zip(g["idx"] or range(g["n"]), g["val"], v["val"]) if a != b]
        stats = ", ".join(f"{k} {v[k]} (golden {g[k]})" for k in ("sum", "min", "max", "distinct") if k in g)
        first = f"; first differing kept value: row {diff[0][0]}: {diff[0][2]!r} (golden {diff[0][1]!r})" if diff else \
            "; the kept values agree, others differ"
        rel = ""
        if g["kind"] == "int" and g["sum"] != v["sum"]:
            rel = f"; relative difference of sums {abs(v['sum'] - g['sum']) / max(abs(g['sum']), 1):.3g}"
        return f"{where}: {g['kind']} values differ (compared exactly): {stats}{first}{rel}", None
    checks = _float_checks(g, v)
    worst = max(checks, key=lambda c: c[3])
    bad = [c for c in checks if not c[4]]
    text = (f"largest relative difference {worst[3]:.3g} ({worst[0]}: now {worst[2]!r}, golden {worst[1]!r})")
    if not bad:
        return None, f"{where}: not bit-identical, within rtol {RTOL:g}: {text}"
    order_free = {"sum", "abs", "min", "max"}
    hint = ""
    if all(c[4] for c in checks if c[0] in order_free) and all(c[0] not in order_free for c in bad):
        hint = " (sum, min and max agree: rows in another order?)"
    return (f"{where}: {text}; beyond rtol {RTOL:g}/atol {ATOL:g} in {len(bad)} of {len(checks)} checks: "
            f"{', '.join(c[0] for c in bad[:6])}{hint}"), None


def compare_tables(now: dict, golden: dict) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    for name in sorted(golden.keys() - now.keys()):
        problems.append(f"{name}: table missing (the golden run wrote it)")
    for name in sorted(now.keys() - golden.keys()):
        problems.append(f"{name}: new table (not in the golden run)")
    for name in sorted(golden.keys() & now.keys()):
        g, v = golden[name], now[name]
        if g["columns"] != v["columns"]:
            gc, vc = dict(map(tuple, g["columns"])), dict(map(tuple, v["columns"]))
            what = [f"missing {sorted(gc.keys() - vc.keys())}" if gc.keys() - vc.keys() else "",
                    f"new {sorted(vc.keys() - gc.keys())}" if vc.keys() - gc.keys() else "",
                    "; ".join(f"{c}: {vc[c]} (golden {gc[c]})" for c in gc.keys() & vc.keys() if gc[c] != vc[c]),
                    "order differs" if [c for c, _ in g["columns"] if c in vc] != [c for c, _ in v["columns"] if c in gc]
                    else ""]
            problems.append(f"{name}: columns differ: {'; '.join(w for w in what if w)}")
        if g["rows"] != v["rows"]:
            problems.append(f"{name}: {v['rows']} rows, golden {g['rows']}")
            continue
        for part in g["parts"]:
            if part not in v["parts"]:
                continue  # named above as a missing column
            problem, note = compare_part(f"{name} column {part}", g["parts"][part], v["parts"][part])
            problems += [problem] if problem else []
            notes += [note] if note else []
    return problems, notes


def compare_summaries(now: dict, golden: dict) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    for name in sorted(golden.keys() - now.keys()):
        problems.append(f"{name}: JSON file missing (the golden run wrote it)")
    for name in sorted(now.keys() - golden.keys()):
        problems.append(f"{name}: new JSON file (not in the golden run)")
    for name in sorted(golden.keys() & now.keys()):
        g, v = golden[name], now[name]
        for key in sorted(g.keys() - v.keys()):
            problems.append(f"{name}: {key} missing (golden {g[key]!r})")
        for key in sorted(v.keys() - g.keys()):
            problems.append(f"{name}: {key} new ({v[key]!r})")
        for key in sorted(g.keys() & v.keys()):
            a, b = g[key], v[key]
            if a == b and type(a) is type(b):
                continue
            nums = (int, float, str)
            floaty = (isinstance(a, float) or isinstance(b, float) or a in ("nan", "inf", "-inf")
                      or b in ("nan", "inf", "-inf"))
            if floaty and isinstance(a, nums) and isinstance(b, nums) and not isinstance(a, bool) \
                    and not isinstance(b, bool):
                try:
                    fa, fb = float(a), float(b)
                except ValueError:
                    fa = fb = None
                if fa is not None:
                    rel = _rel(fa, fb)
                    if rel <= RTOL:
                        if rel:
                            notes.append(f"{name}: {key}: not bit-identical, within rtol {RTOL:g}: relative "
                                         f"difference {rel:.3g} (now {b!r}, golden {a!r})")
                        continue
                    problems.append(f"{name}: {key}: relative difference {rel:.3g} (now {b!r}, golden {a!r})")
                    continue
            problems.append(f"{name}: {key}: {b!r}, golden {a!r}")
    return problems, notes


# ---- the test -----------------------------------------------------------------------------------

def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def run_default(dest: Path) -> Path:
    """The default workflow, copied into `dest` and run as the README's first command runs it."""
    cwd = copy_workflow(dest, default_config())
    snakemake(cwd, "--cores", "2")
    return cwd / "results"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return describe(run_default(tmp_path_factory.mktemp("default")))


def _report(kind: str, problems: list[str], notes: list[str]) -> None:
    if notes:
        warnings.warn(f"{len(notes)} {kind} not bit-identical but within rtol {RTOL:g}:\n" + "\n".join(notes),
                      stacklevel=2)
    assert not problems, (f"{len(problems)} {kind} differ from tests/golden/default_run (if intended: "
                          f"python tests/workflow/test_default_tables.py --regenerate):\n" + "\n".join(problems))


def test_every_table_of_the_default_run_matches_the_golden_data(default_run):
    _report("table columns", *compare_tables(default_run[0], load_golden()[0]))


def test_every_json_summary_of_the_default_run_matches_the_golden_data(default_run):
    _report("JSON values", *compare_summaries(default_run[1], load_golden()[1]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate tests/golden/default_run (see the module docstring).")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--regenerate", action="store_true", help="run the default workflow in a temporary folder")
    what.add_argument("--from", dest="results", type=Path, help="describe this results folder of a default run")
    what.add_argument("--check", type=Path, help="compare this results folder with the golden data, write nothing")
    parser.add_argument("--golden", type=Path, default=GOLDEN)
    args = parser.parse_args(argv)
    for folder in (args.check, args.results):
        if folder is not None and not folder.is_dir():
            parser.error(f"{folder}: no such folder (a default run's results/)")
    if args.check:
        tables, summaries = describe(args.check)
        golden = load_golden(args.golden)
        for kind, (problems, notes) in (("tables", compare_tables(tables, golden[0])),
                                        ("summaries", compare_summaries(summaries, golden[1]))):
            print(f"== {kind}: {len(problems)} problems, {len(notes)} within tolerance but not bit-identical")
            print("\n".join(problems + notes))
        return
    if args.regenerate:
        with tempfile.TemporaryDirectory() as tmp:
            write_golden(run_default(Path(tmp) / "wf"), args.golden)
    else:
        write_golden(args.results, args.golden)
    print(f"wrote {args.golden}: " + ", ".join(f"{p.name} {p.stat().st_size} bytes" for p in sorted(args.golden.iterdir())))


if __name__ == "__main__":
    main()
