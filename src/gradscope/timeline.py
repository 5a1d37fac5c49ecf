"""One timeline per run: loss spikes, sharpness at 2/lr and opposing groups in antiphase, linked.

Rosenfeld & Risteski (2023) tie together opposing groups whose losses move in antiphase, the
spikes of the training loss and the curvature at the edge of stability (Cohen et al. 2021).
This module finds each kind of event in a run's tables and measures how often they coincide,
against the same events shuffled in time. Pure numpy and pandas: the tables come in as
DataFrames (the timeline stage reads and writes them).

Events (`events`; one row each, columns EVENT_COLUMNS):
- loss_spike: the training loss above its rolling baseline (`loss_spikes`);
- sharpness_reach / sharpness_leave: sharpness rising to 2/lr and falling below it
  (`sharpness_crossings`; none where 2/lr does not apply, see `report.edge_assessed`);
- antiphase: the run's top pair of opposing groups (`top_pair`) moving in antiphase
  (`antiphase_intervals`), with the pair in group_a, group_b and step_from;
- memorization / generalization: the headline's step_memorized and step_generalized
  (`report.headline`, from `signals.generalization_events`).

Every event has a step, an extent (step_start..step_end), a resolution (in steps: how well the
tables place it) and a value (its size, per kind). Links (`links`): for each spike the nearest
crossing and whether the pair is in antiphase within a window, and the fraction of spikes near
either against the fractions expected of the same events placed uniformly at random.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradscope import config

SPIKE, REACH, LEAVE, ANTIPHASE = "loss_spike", "sharpness_reach", "sharpness_leave", "antiphase"
GENERALIZATION, MEMORIZATION = "generalization", "memorization"
CROSSINGS = (REACH, LEAVE)
KINDS = (SPIKE, REACH, LEAVE, ANTIPHASE, MEMORIZATION, GENERALIZATION)
COLUMNS = ["kind", "step", "step_start", "step_end", "resolution", "value"]
EVENT_COLUMNS = COLUMNS + ["group_a", "group_b", "step_from"]
LINK_COLUMNS = ["step", "value", "resolution", "window", "nearest_crossing_step", "nearest_crossing_kind",
                "crossing_distance", "near_crossing", "antiphase_distance", "antiphase_active"]
_CHUNK = 4_000_000  # most elements of one shuffle batch (shuffles x spikes x events)


def _empty(columns=COLUMNS) -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype=object if c == "kind" else float) for c in columns})
    for c in ("group_a", "group_b", "step_from"):
        if c in out:
            out[c] = out[c].astype("Int64")
    return out


def _frame(rows: list[dict], columns=COLUMNS) -> pd.DataFrame:
    if not rows:
        return _empty(columns)
    out = pd.DataFrame(rows, columns=columns)
    for c in columns:
        if c == "kind":
            out[c] = out[c].astype(object)
        elif c in ("group_a", "group_b", "step_from"):
            out[c] = pd.array([None if v is None or pd.isna(v) else int(v) for v in out[c]], dtype="Int64")
        else:
            out[c] = out[c].astype(float)
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of each run of consecutive True values."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


# ---- events ---------------------------------------------------------------------------------
def loss_spikes(step, loss, *, window: int, margin: float) -> pd.DataFrame:
    """Loss spikes: logged losses above their baseline, the median of the previous `window`
    logged values (at least half of them, so the first points have none), by more than `margin`
    of it (loss > baseline * (1 + margin)). Consecutive points above are one spike: step is its
    peak (the highest loss / baseline), step_start and step_end its first and last point above,
    value the peak's loss / baseline, resolution the logging interval (the median step gap)."""
    step, loss = np.asarray(step, dtype=float), np.asarray(loss, dtype=float)
    order = np.argsort(step, kind="stable")
    step, loss = step[order], loss[order]
    if len(step) < 2:
        return _empty()
    baseline = pd.Series(loss).rolling(int(window), min_periods=max(1, math.ceil(window / 2))).median()
    baseline = baseline.shift(1).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = loss / baseline
        above = np.isfinite(baseline) & ~np.isnan(loss) & (loss > baseline * (1 + margin))
    resolution = float(np.median(np.diff(step)))
    rows = []
    for first, last in _runs(above):
        peak = first + int(np.nanargmax(np.where(np.isnan(ratio[first:last + 1]), -np.inf, ratio[first:last + 1])))
        rows.append({"kind": SPIKE, "step": step[peak], "step_start": step[first], "step_end": step[last],
                     "resolution": resolution, "value": ratio[peak]})
    return _frame(rows)


def sharpness_crossings(step, sharpness, threshold) -> pd.DataFrame:
    """Sharpness reaching its threshold (sharpness_reach: from below to at or above it) and
    leaving it (sharpness_leave: from at or above to below) between consecutive checkpoints.

    The threshold is per row (2/lr follows an lr schedule); rows where it or the sharpness is
    null or not finite are left out, so an all-null threshold (an adaptive optimizer) gives no
    events. step: where sharpness - threshold, interpolated linearly between the two bracketing
    checkpoints (step_start, step_end), crosses zero; resolution: their gap; value: sharpness /
    threshold at the checkpoint after the crossing."""
    step = np.asarray(step, dtype=float)
    sharp = np.asarray(sharpness, dtype=float)
    thr = np.asarray(pd.to_numeric(pd.Series(threshold, dtype=object), errors="coerce"), dtype=float)
    keep = np.isfinite(step) & np.isfinite(sharp) & np.isfinite(thr) & (thr > 0)
    step, sharp, thr = step[keep], sharp[keep], thr[keep]
    order = np.argsort(step, kind="stable")
    step, sharp, thr = step[order], sharp[order], thr[order]
    d = sharp - thr
    rows = []
    for i in range(1, len(step)):
        d0, d1 = d[i - 1], d[i]
        kind = REACH if d0 < 0 <= d1 else LEAVE if d1 < 0 <= d0 else None
        if kind is None:
            continue
        at = step[i - 1] + (step[i] - step[i - 1]) * (-d0) / (d1 - d0)
        rows.append({"kind": kind, "step": float(at), "step_start": step[i - 1], "step_end": step[i],
                     "resolution": step[i] - step[i - 1], "value": sharp[i] / thr[i]})
    return _frame(rows)


def rolling_correlation(a: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """Pearson correlation of a and b over each run of `window` consecutive entries (len(a) -
    window + 1 of them; NaN where either is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < window:
        return np.array([])
    wa = np.lib.stride_tricks.sliding_window_view(a, window)
    wb = np.lib.stride_tricks.sliding_window_view(b, window)
    ca, cb = wa - wa.mean(1, keepdims=True), wb - wb.mean(1, keepdims=True)
    den = np.sqrt((ca**2).sum(1) * (cb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ca * cb).sum(1) / den
    scale = np.maximum(np.abs(wa).max(1), np.abs(wb).max(1))
    return np.where(den > 1e-24 * np.maximum(scale, 1e-300) ** 2, r, np.nan)


def antiphase_intervals(step, loss_a, loss_b, *, window: int, threshold: float) -> pd.DataFrame:
    """Where two groups' losses move in antiphase: the correlation of their loss changes between
    consecutive checkpoints (np.diff) over each run of `window` consecutive changes, and the
    intervals where it is at most `threshold` (negative: one group's loss rises while the other's
    falls). Overlapping windows at or below it form one interval: step_start..step_end are the
    checkpoints it spans, step its middle, value its mean correlation (sign and strength),
    resolution the largest checkpoint gap inside it."""
    step = np.asarray(step, dtype=float)
    a, b = np.asarray(loss_a, dtype=float), np.asarray(loss_b, dtype=float)
    keep = np.isfinite(step) & np.isfinite(a) & np.isfinite(b)
    step, a, b = step[keep], a[keep], b[keep]
    order = np.argsort(step, kind="stable")
    step, a, b = step[order], a[order], b[order]
    window = int(window)
    corr = rolling_correlation(np.diff(a), np.diff(b), window)
    rows = []
    for first, last in _runs(np.nan_to_num(corr, nan=np.inf) <= threshold):
        start, end = step[first], step[last + window]
        rows.append({"kind": ANTIPHASE, "step": (start + end) / 2, "step_start": start, "step_end": end,
                     "resolution": float(np.diff(step[first:last + window + 1]).max()),
                     "value": float(corr[first:last + 1].mean())})
    return _frame(rows)


def top_pair(group_pairs: pd.DataFrame | None) -> dict | None:
    """The run's top pair of opposing groups: of the opposing pairs (cosine < 0) of every
    checkpoint interval, the one whose groups' mean gradients are most opposed (most negative
    cosine; ties to the larger smaller group, then the earlier interval). A dict of group_a,
    group_b, step_from, step_to, cosine; None without an opposing pair. Group numbers are those
    of its interval (each interval is clustered anew), so the pair is named by step_from too."""
    if group_pairs is None or not len(group_pairs):
        return None
    p = group_pairs[group_pairs["opposing"].astype(bool)].copy()
    if not len(p):
        return None
    p["_smaller"] = -np.minimum(p["size_a"].to_numpy(dtype=float), p["size_b"].to_numpy(dtype=float))
    best = p.sort_values(["cosine", "_smaller", "step_from"], kind="stable").iloc[0]
    return {"group_a": int(best["group_a"]), "group_b": int(best["group_b"]), "step_from": int(best["step_from"]),
            "step_to": int(best["step_to"]), "cosine": float(best["cosine"])}


def pair_losses(group_losses: pd.DataFrame, pair: dict) -> pd.DataFrame:
    """The pair's two mean losses at every checkpoint: step, loss_a, loss_b (sorted by step)."""
    g = group_losses[group_losses["step_from"] == pair["step_from"]]
    if "step_to" in pair and "step_to" in g:
        g = g[g["step_to"] == pair["step_to"]]
    a = g[g["group"] == pair["group_a"]].groupby("step")["mean_loss"].mean()
    b = g[g["group"] == pair["group_b"]].groupby("step")["mean_loss"].mean()
    both = pd.concat({"loss_a": a, "loss_b": b}, axis=1).dropna().sort_index()
    return both.rename_axis("step").reset_index()


def _settings(settings: dict | None) -> dict:
    """The timeline block (or a run's settings holding it) over the schema's defaults, validated."""
    s = settings or {}
    return config.filled("timeline", s["timeline"] if isinstance(s.get("timeline"), dict) else s)


def _generalization_events(metrics: pd.DataFrame | None, headline: dict | None) -> list[dict]:
    """memorization and generalization at the headline's step_memorized and step_generalized
    (`report.headline`, found by `signals.generalization_events` on the logged accuracies): each
    placed to within the logging interval before it; value the accuracy reached there."""
    rows = []
    steps = np.sort(metrics["step"].to_numpy(dtype=float)) if metrics is not None and len(metrics) else np.array([])
    for kind, key, column in ((MEMORIZATION, "step_memorized", "train_acc"),
                              (GENERALIZATION, "step_generalized", "test_acc")):
        at = (headline or {}).get(key)
        if at is None or pd.isna(at) or not np.isfinite(float(at)):
            continue
        at = float(at)
        before = steps[steps < at]
        start = float(before[-1]) if len(before) else at
        value = np.nan
        if metrics is not None and column in metrics:
            hit = metrics.loc[metrics["step"].astype(float) == at, column]
            value = float(hit.iloc[0]) if len(hit) else np.nan
        rows.append({"kind": kind, "step": at, "step_start": start, "step_end": at, "resolution": at - start,
                     "value": value})
    return rows


def events(metrics: pd.DataFrame | None, curvature: pd.DataFrame | None, group_losses: pd.DataFrame | None,
           group_pairs: pd.DataFrame | None, headline: dict | None, settings: dict | None) -> pd.DataFrame:
    """Every event of a run (columns EVENT_COLUMNS, sorted by step): loss spikes of the training
    loss (spike_window, spike_margin), sharpness crossings of sharpness_threshold (none where it
    is null), antiphase intervals of the top pair (`top_pair`: antiphase_window,
    antiphase_threshold; group_a, group_b and step_from name the pair, null on other kinds), and
    memorization and generalization from the headline (`report.headline`). `settings`: the
    timeline block (or a run's settings holding it); missing keys take the schema's defaults."""
    s = _settings(settings)
    parts = []
    if metrics is not None and len(metrics):
        parts.append(loss_spikes(metrics["step"], metrics["train_loss"], window=s["spike_window"],
                                 margin=s["spike_margin"]))
    if curvature is not None and len(curvature) and "sharpness_threshold" in curvature:
        parts.append(sharpness_crossings(curvature["step"], curvature["sharpness"], curvature["sharpness_threshold"]))
    pair = top_pair(group_pairs)
    if pair is not None and group_losses is not None and len(group_losses):
        pl = pair_losses(group_losses, pair)
        anti = antiphase_intervals(pl["step"], pl["loss_a"], pl["loss_b"], window=s["antiphase_window"],
                                   threshold=s["antiphase_threshold"])
        parts.append(anti.assign(group_a=pair["group_a"], group_b=pair["group_b"], step_from=pair["step_from"]))
    parts.append(_frame(_generalization_events(metrics, headline)))
    parts = [p.reindex(columns=EVENT_COLUMNS) for p in parts if len(p)]
    if not parts:
        return _empty(EVENT_COLUMNS)
    out = _frame(pd.concat(parts, ignore_index=True).to_dict("records"), EVENT_COLUMNS)
    out["_order"] = out["kind"].map({k: i for i, k in enumerate(KINDS)})
    return out.sort_values(["step", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


# ---- links ----------------------------------------------------------------------------------
def spike_windows(spike_steps, checkpoints) -> np.ndarray:
    """link_window null: twice the checkpoint interval each spike lies in (the larger of the two
    around a spike on a checkpoint; the first or last interval beyond them), 0 with fewer than
    two checkpoints."""
    s = np.asarray(spike_steps, dtype=float)
    grid = np.unique(np.asarray(checkpoints, dtype=float)[np.isfinite(np.asarray(checkpoints, dtype=float))])
    if len(grid) < 2:
        return np.zeros(len(s))
    gaps = np.concatenate([[0.0], np.diff(grid), [0.0]])  # gaps[k]: the interval ending at grid[k]
    k = np.searchsorted(grid, s, side="left")  # grid[k - 1] < s <= grid[k]
    on = (k < len(grid)) & (grid[np.minimum(k, len(grid) - 1)] == s)
    inside = gaps[np.clip(k, 1, len(grid) - 1)]  # the interval s lies in (the first or last one beyond the grid)
    around = np.maximum(gaps[np.minimum(k, len(grid))], gaps[np.minimum(k + 1, len(grid))])
    return 2 * np.where(on, around, inside)


def _interval_distance(s: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each step in s (last axis broadcast against the intervals') to an interval, 0 inside."""
    return np.maximum(np.maximum(start - s, s - end), 0.0)


def _shuffled(spikes: np.ndarray, w: np.ndarray, lengths: np.ndarray, span: tuple[float, float], shuffles: int,
              rng: np.random.Generator) -> np.ndarray:
    """Per shuffle, the fraction of spikes within their window of one of the events (of the given
    lengths: 0 for crossings) placed uniformly at random: each interval's start uniform over the
    steps that keep it inside the span."""
    lo, hi = span
    room = np.maximum(hi - lo - lengths, 0.0)
    out = np.empty(shuffles)
    per = max(1, _CHUNK // max(1, len(spikes) * len(lengths)))
    for k in range(0, shuffles, per):
        n = min(per, shuffles - k)
        start = lo + rng.random((n, len(lengths))) * room  # (n, events)
        d = _interval_distance(spikes[None, :, None], start[:, None, :], (start + lengths)[:, None, :])
        out[k:k + n] = (d.min(2) <= w[None, :]).mean(1)
    return out


def _baseline(name: str, observed: np.ndarray, spikes: np.ndarray, w: np.ndarray, lengths: np.ndarray,
              span: tuple[float, float], shuffles: int, rng: np.random.Generator) -> dict:
    n = len(spikes)
    out = {name: int(observed.sum())}
    if n == 0:
        return {**out, f"{name}_fraction": None, f"{name}_expected": None, f"{name}_expected_sd": None,
                f"{name}_p": None}
    fraction = float(observed.mean())
    if len(lengths) == 0:
        return {**out, f"{name}_fraction": fraction, f"{name}_expected": 0.0, f"{name}_expected_sd": 0.0,
                f"{name}_p": 1.0}
    shuffled = _shuffled(spikes, w, lengths, span, int(shuffles), rng)
    return {**out, f"{name}_fraction": fraction, f"{name}_expected": float(shuffled.mean()),
            f"{name}_expected_sd": float(shuffled.std()),
            f"{name}_p": float((shuffled >= fraction - 1e-12).mean())}


def links(events: pd.DataFrame, *, window: float | None, shuffles: int, seed: int, span: tuple[float, float],
          checkpoints=None) -> tuple[pd.DataFrame, dict]:
    """Each loss spike linked to the sharpness crossings and antiphase intervals of `events`.

    window: steps either side of a spike (a number), or None: per spike, twice the interval of
    `checkpoints` it lies in (`spike_windows`; without checkpoints, those the events' crossings
    and antiphase intervals start and end at, with the span's ends, a coarser grid).
    Rows (LINK_COLUMNS), one per spike: step, value (loss / baseline), resolution (the coarser of
    the spike's and its nearest crossing's), window, nearest_crossing_step and _kind,
    crossing_distance (NaN without crossings), near_crossing (distance <= window),
    antiphase_distance (0 inside an interval), antiphase_active (distance <= window).
    Summary: n_spikes, n_crossings, n_antiphase; spikes_near_crossing (count), _fraction,
    _expected and _expected_sd (mean and sd over `shuffles` placements of the same number of
    crossings uniformly in `span`, seeded), _p (the fraction of shuffles at least as high); the
    same for spikes_with_antiphase (the intervals keep their lengths); window (as given),
    window_min and window_max (the windows used), the resolutions and a note on them."""
    ev = events if events is not None else _empty(EVENT_COLUMNS)
    spikes = ev[ev["kind"] == SPIKE].sort_values("step")
    cross = ev[ev["kind"].isin(CROSSINGS)].sort_values("step")
    anti = ev[ev["kind"] == ANTIPHASE].sort_values("step")
    s = spikes["step"].to_numpy(dtype=float)
    span = (float(span[0]), float(span[1]))
    if window is None:
        if checkpoints is None:
            checkpoints = np.concatenate([cross[["step_start", "step_end"]].to_numpy(dtype=float).ravel(),
                                          anti[["step_start", "step_end"]].to_numpy(dtype=float).ravel(), span])
        w = spike_windows(s, checkpoints)
    else:
        w = np.full(len(s), float(window))
    c = cross["step"].to_numpy(dtype=float)
    if len(c) and len(s):
        d = np.abs(s[:, None] - c[None, :])
        nearest = d.argmin(1)
        dist = d[np.arange(len(s)), nearest]
        near_step, near_kind = c[nearest], cross["kind"].to_numpy()[nearest]
        near_res = cross["resolution"].to_numpy(dtype=float)[nearest]
    else:
        dist = near_step = near_res = np.full(len(s), np.nan)
        near_kind = np.full(len(s), None, dtype=object)
    a0, a1 = anti["step_start"].to_numpy(dtype=float), anti["step_end"].to_numpy(dtype=float)
    adist = (_interval_distance(s[:, None], a0[None, :], a1[None, :]).min(1) if len(a0) and len(s)
             else np.full(len(s), np.nan))
    spike_res = spikes["resolution"].to_numpy(dtype=float)
    table = pd.DataFrame({
        "step": s, "value": spikes["value"].to_numpy(dtype=float), "resolution": np.fmax(spike_res, near_res),
        "window": w, "nearest_crossing_step": near_step, "nearest_crossing_kind": pd.Series(near_kind, dtype=object),
        "crossing_distance": dist, "near_crossing": np.nan_to_num(dist, nan=np.inf) <= w,
        "antiphase_distance": adist, "antiphase_active": np.nan_to_num(adist, nan=np.inf) <= w,
    }, columns=LINK_COLUMNS)
    rng = np.random.default_rng(int(seed))
    summary = {"n_spikes": int(len(s)), "n_crossings": int(len(c)), "n_antiphase": int(len(a0))}
    summary.update(_baseline("spikes_near_crossing", table["near_crossing"].to_numpy(bool), s, w, np.zeros(len(c)),
                             span, shuffles, rng))
    summary.update(_baseline("spikes_with_antiphase", table["antiphase_active"].to_numpy(bool), s, w,
                             np.maximum(a1 - a0, 0.0), span, shuffles, rng))
    spike_resolution = float(spike_res[0]) if len(spike_res) else None
    cres = cross["resolution"].to_numpy(dtype=float)
    ares = anti["resolution"].to_numpy(dtype=float)
    summary.update({
        "window": None if window is None else float(window),
        "window_min": float(w.min()) if len(w) else None, "window_max": float(w.max()) if len(w) else None,
        "shuffles": int(shuffles), "seed": int(seed), "span": [span[0], span[1]],
        "spike_resolution": spike_resolution,
        "crossing_resolution_median": float(np.median(cres)) if len(cres) else None,
        "crossing_resolution_max": float(cres.max()) if len(cres) else None,
        "antiphase_resolution_max": float(ares.max()) if len(ares) else None,
        "resolution": _resolution_note(window, w, spike_resolution, cres, ares),
    })
    return table, summary


def _resolution_note(window, w, spike_res, cres, ares) -> str:
    f = lambda v: f"{v:.4g}"  # noqa: E731
    parts = [f"loss spikes are placed to within the logging interval ({f(spike_res)} steps)" if spike_res is not None
             else "no loss spikes"]
    if len(cres):
        parts.append(f"sharpness crossings to within the checkpoint interval around them (interpolated; median "
                     f"{f(np.median(cres))}, largest {f(cres.max())} steps)")
    if len(ares):
        parts.append(f"antiphase intervals to within their checkpoint gaps (largest {f(ares.max())} steps)")
    if len(w):
        how = (f"a window of {f(float(window))} steps" if window is not None else
               f"a window of twice the checkpoint interval around each spike ({f(w.min())} to {f(w.max())} steps)")
        parts.append(f"links use {how}; a window as wide as the resolution can only say the events share an "
                     "interval (dense checkpoints, train.checkpoints.dense, narrow it)")
    return "; ".join(parts) + "."


def loss_group_correlation(metrics: pd.DataFrame, group_losses: pd.DataFrame, pair: dict | None) -> float | None:
    """The correlation between the training loss's change over each interval between consecutive
    checkpoints (its logged values interpolated linearly at the checkpoints) and the change of the
    pair's loss difference (loss_a - loss_b) over the same intervals; None with fewer than 3
    intervals inside the logged steps, or where either change is constant."""
    if pair is None or metrics is None or not len(metrics) or group_losses is None or not len(group_losses):
        return None
    pl = pair_losses(group_losses, pair)
    m = metrics[["step", "train_loss"]].dropna().sort_values("step")
    ms = m["step"].to_numpy(dtype=float)
    pl = pl[(pl["step"] >= ms[0]) & (pl["step"] <= ms[-1])]
    if len(pl) < 4:
        return None
    steps = pl["step"].to_numpy(dtype=float)
    train = np.interp(steps, ms, m["train_loss"].to_numpy(dtype=float))
    diff = (pl["loss_a"] - pl["loss_b"]).to_numpy(dtype=float)
    r = rolling_correlation(np.diff(train), np.diff(diff), len(steps) - 1)
    return None if not len(r) or not np.isfinite(r[0]) else float(r[0])


def build(metrics: pd.DataFrame | None, curvature: pd.DataFrame | None, group_losses: pd.DataFrame | None,
          group_pairs: pd.DataFrame | None, headline: dict | None, settings: dict | None
          ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A run's timeline in one call: (events, links table, summary). The span is the logged
    steps' first and last (the checkpoints' without metrics); link_window null takes each spike's
    window from the curvature table's checkpoints (the group losses' without it). The summary is
    `links`' with pair (`top_pair`, or None), loss_group_correlation and n_events per kind."""
    s = _settings(settings)
    ev = events(metrics, curvature, group_losses, group_pairs, headline, s)
    checkpoints = (curvature["step"].to_numpy(dtype=float) if curvature is not None and len(curvature) else
                   np.unique(group_losses["step"].to_numpy(dtype=float)) if group_losses is not None
                   and len(group_losses) else np.array([]))
    if metrics is not None and len(metrics):
        span = (float(metrics["step"].min()), float(metrics["step"].max()))
    elif len(checkpoints):
        span = (float(checkpoints.min()), float(checkpoints.max()))
    else:
        span = (0.0, 0.0)
    table, summary = links(ev, window=s["link_window"], shuffles=s["shuffles"], seed=s["seed"], span=span,
                           checkpoints=checkpoints)
    pair = top_pair(group_pairs)
    summary.update({"pair": pair, "loss_group_correlation": loss_group_correlation(metrics, group_losses, pair),
                    "n_events": {k: int((ev["kind"] == k).sum()) for k in KINDS}})
    return ev, table, summary
