"""Driving a page in the headless browser (the session fixture `browser` in conftest.py): load it, read a
figure, collect console errors."""

import time
from pathlib import Path


def open_page(driver, path: Path) -> float:
    """Load a page from disk; the seconds until its script has drawn the first view."""
    start = time.perf_counter()
    driver.get(path.resolve().as_uri())
    while driver.execute_script("return document.body.dataset.ready || (document.title ? 'x' : '')") != "1":
        assert time.perf_counter() - start < 60, f"{path} did not finish loading"
        if path.name == "index.html":
            break
        time.sleep(0.05)
    return time.perf_counter() - start


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def figure(driver, fid: str) -> dict:
    """What a figure shows: its trace names, the number of points, its x range, and its empty-figure text
    (the data traces: not the Training tab's legend entries of the line styles, `styleKey`)."""
    return driver.execute_script("""
        const el = document.getElementById('fig-' + arguments[0]);
        if (!el || !el._fullLayout) return null;
        const data = el.data.filter(t => !t.styleKey);
        return {names: data.map(t => t.name), points: data.reduce((n, t) => n + (t.y ? t.y.length : 0), 0),
                ys: data.map(t => Array.from(t.y || []).slice(0, 50)),
                range: el._fullLayout.xaxis.range, empty: (el.layout.annotations || []).map(a => a.text).join(' ')};""", fid)
