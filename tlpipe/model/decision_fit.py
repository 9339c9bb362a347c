"""Fitting the decision rule on validation (tlpipe.model.decision applies it).

Deterministic, on validation only, in two steps, each an exact search:
1. the strength `tau` of a prior correction, offsets = -tau * log(training prior), tau in
   [TAU_MIN, TAU_MAX]: one parameter, whatever the number of classes;
2. coordinate ascent on each class's own offset (for two classes: the threshold).
A metric of decisions is piecewise constant along either search, changing only where an image
changes class, so every interval between those points is scored (with running confusion
counts), and the chosen value is the middle of the best interval, not its edge; a move must
strictly raise the metric.

Not over-fitting a small validation set: the families are nested, argmax (no offsets) < prior
(step 1) < own (steps 1 and 2), and a larger one replaces the one kept so far only where validation
gives evidence that it generalises. Each family is fitted on one half of validation (stratified by
class, each patient or near-duplicate group whole) and decides the other half, both ways round; the
larger family's gain in the metric over these held-out decisions must be above zero at 95% one-sided
confidence, by a bootstrap that resamples validation groups (images of one patient or near-duplicate
group rise and fall together). A gain inside the noise keeps the smaller family: the earlier gate
(any positive held-out gain) let in rules that raised validation and lowered the same metric on
test (chest X-ray, digits, brain MRI). `why` says in one line what was kept and the evidence.
On a synthetic 70/20/10 problem whose probabilities are right up to the prior, own offsets fitted on
1,200 validation images lost to the prior correction alone on fresh data; the gate keeps them out
there and lets them in where the model is miscalibrated class by class (tests/test_decision.py).
Only classes with at least MIN_VAL_IMAGES validation images get an own offset.
"""

import numpy as np

from tlpipe.model.decision import (METRICS, kappa_weights, log_probs, metric_from_stats, metric_of_confusions,
                                   metric_value)

MIN_VAL_IMAGES = 20
TAU_MIN, TAU_MAX = -1.5, 2.0
EDGE_MARGIN = 1.0          # an own offset past the last change point sits this far (log units) beyond it
MAX_SWEEPS = 30
_CHUNK_CELLS = 2_000_000   # events x classes scored at once (bounds memory on large validation sets)
EVIDENCE_DRAWS = 1000      # bootstrap resamples of validation groups behind the gate
EVIDENCE_LEVEL = 0.95      # a larger family is kept when its held-out gain is above 0 at this one-sided confidence
FAMILY_NAMES = {"argmax": "argmax", "prior": "prior correction", "own": "own offsets"}


def _value(name: str, y: np.ndarray, scores: np.ndarray) -> float:
    return metric_value(name, y, scores.argmax(1), scores.shape[1])


def _sweep(name: str, y: np.ndarray, start: np.ndarray, num_classes: int,
           moved: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The metric of decisions `start`, then after each event in turn (image `moved` changes
    from class `old` to `new`): len(moved) + 1 values."""
    confusion = np.bincount(y * num_classes + start, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    row = confusion.sum(1).astype(np.float64)
    weights = kappa_weights(num_classes)
    tp, col = np.diag(confusion).astype(np.float64), confusion.sum(0).astype(np.float64)
    wsum = float((confusion * weights).sum())
    values = [metric_from_stats(name, tp[None], col[None], np.array([wsum]), row)]
    label = y[moved]
    chunk = max(1, _CHUNK_CELLS // num_classes)
    for begin in range(0, len(moved), chunk):
        part = slice(begin, begin + chunk)
        lab, o, w = label[part], old[part], new[part]
        steps = np.arange(len(lab))
        dtp, dcol = np.zeros((len(lab), num_classes)), np.zeros((len(lab), num_classes))
        np.add.at(dtp, (steps, w), lab == w)
        np.add.at(dtp, (steps, o), -(lab == o).astype(np.float64))
        np.add.at(dcol, (steps, w), 1.0)
        np.add.at(dcol, (steps, o), -1.0)
        tps, cols = tp + np.cumsum(dtp, 0), col + np.cumsum(dcol, 0)
        wsums = wsum + np.cumsum(weights[lab, w] - weights[lab, o])
        values.append(metric_from_stats(name, tps, cols, wsums, row))
        tp, col, wsum = tps[-1], cols[-1], float(wsums[-1])
    return np.concatenate(values)


def _best_interval(values: np.ndarray, points: np.ndarray, prefer: int) -> tuple[int, int]:
    """values[j] holds between points[j-1] and points[j]: the (first, last) j of the run of best
    values nearest to j = `prefer` (intervals of zero width, between equal points, never win)."""
    values = values.copy()
    values[1:-1][points[1:] == points[:-1]] = -np.inf
    best = np.flatnonzero(values >= values.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    distance = [0 if r[0] <= prefer <= r[-1] else min(abs(r[0] - prefer), abs(r[-1] - prefer)) for r in runs]
    run = runs[int(np.argmin(distance))]
    return int(run[0]), int(run[-1])


def _fit_tau(name: str, y: np.ndarray, logp: np.ndarray, log_prior: np.ndarray) -> float:
    """The exact best strength in [TAU_MIN, TAU_MAX] (the middle of its best interval; of equal
    runs, the one nearest no correction). Scores logp - tau * log_prior are lines in tau, so each
    image's decision walks from class to class (towards rarer ones) at computable points."""
    n, num_classes = logp.shape
    slope = -log_prior
    current = (logp + TAU_MIN * slope).argmax(1)
    start, at = current.copy(), np.full(n, TAU_MIN)
    events = []  # (tau, image, from, to)
    active = np.arange(n)
    for _ in range(num_classes - 1):
        if not len(active):
            break
        d = current[active]
        gain = slope[None, :] - slope[d][:, None]           # how much faster class k rises than d
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = (logp[active, d][:, None] - logp[active]) / gain
        cross[(gain <= 0) | ~(cross >= at[active][:, None])] = np.inf
        to = cross.argmin(1)
        when = cross[np.arange(len(active)), to]
        keep = when < TAU_MAX
        events.append((when[keep], active[keep], d[keep], to[keep]))
        current[active[keep]], at[active[keep]] = to[keep], when[keep]
        active = active[keep]
    when, moved, old, new = (np.concatenate(part) for part in zip(*events)) if events else [np.zeros(0)] * 4
    order = np.argsort(when, kind="stable")
    when, moved, old, new = when[order], moved[order].astype(np.int64), old[order].astype(np.int64), new[order].astype(np.int64)
    values = _sweep(name, y, start, num_classes, moved, old, new)
    first, last = _best_interval(values, when, int(np.searchsorted(when, 0.0)))
    if first == 0 and last == len(when):  # no strength does better than any other
        return 0.0
    low = when[first - 1] if first > 0 else TAU_MIN
    high = when[last] if last < len(when) else TAU_MAX
    return float((low + high) / 2)


def _line_search(name: str, y: np.ndarray, scores: np.ndarray, offsets: np.ndarray, k: int) -> float | None:
    """The best value of offsets[k] alone (the middle of its best interval), or None if no value
    of it beats the current one. `scores` = log-probabilities + offsets."""
    n, num_classes = scores.shape
    others = scores.copy()
    others[:, k] = -np.inf
    runner = others.argmax(1)
    t = others[np.arange(n), runner] - (scores[:, k] - offsets[k])  # image i is decided k iff offsets[k] > t_i
    order = np.argsort(t, kind="stable")
    t = t[order]
    values = _sweep(name, y, runner, num_classes, order, runner[order], np.full(n, k))
    current = int(np.searchsorted(t, offsets[k], side="left"))
    if values.max() <= values[current] + 1e-12:
        return None
    first, last = _best_interval(values, t, current)
    if first == 0:
        return float(t[last] - EDGE_MARGIN)
    if last == n:
        return float(t[first - 1] + EDGE_MARGIN)
    return float((t[first - 1] + t[last]) / 2)


def _fit_offsets(metric: str, y: np.ndarray, logp: np.ndarray, log_prior: np.ndarray,
                 family: str) -> tuple[float, np.ndarray, list[int]]:
    """The offsets of one family fitted on (y, logp): (tau, offsets, classes with an own offset)."""
    num_classes = logp.shape[1]
    if family == "argmax":
        return 0.0, np.zeros(num_classes), []
    tau = _fit_tau(metric, y, logp, log_prior) if family == "prior" or num_classes > 2 else 0.0
    offsets = -tau * log_prior
    support = np.bincount(y, minlength=num_classes)
    refined = [k for k in range(num_classes) if support[k] >= (1 if num_classes == 2 else MIN_VAL_IMAGES)] \
        if family == "own" else []
    for _ in range(MAX_SWEEPS):
        moved = False
        for k in refined:
            better = _line_search(metric, y, logp + offsets, offsets, k)
            if better is not None:
                offsets[k] = better
                moved = True
        if not moved:
            break
    return tau, offsets - offsets.mean(), refined


def validation_halves(y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """0 or 1 per validation image: two halves stratified by class. With `groups` (patient,
    near-duplicate group: split.csv), a group's images all fall in one half, so a half never judges
    a rule on copies of the images it was fitted on; each group counts in the class of its first image."""
    if groups is None:
        groups = np.arange(len(y))
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    half_of_group = np.zeros(len(first), dtype=np.int64)
    for k in np.unique(y):
        members = np.flatnonzero(y[first] == k)
        members = members[np.argsort(first[members], kind="stable")]  # groups in order of their first image
        half_of_group[members] = np.arange(len(members)) % 2
    return half_of_group[inverse.reshape(-1)]


def _held_out_decisions(metric: str, y: np.ndarray, logp: np.ndarray, log_prior: np.ndarray, family: str,
                        halves: np.ndarray) -> np.ndarray | None:
    """Each validation image's decision by `family` fitted on the other half (None: a half lacks a class)."""
    decided = np.empty(len(y), dtype=np.int64)
    for half in (0, 1):
        fit_on, judge_on = halves == half, halves != half
        if len(np.unique(y[fit_on])) < 2 or len(np.unique(y[judge_on])) < 2:
            return None
        _, offsets, _ = _fit_offsets(metric, y[fit_on], logp[fit_on], log_prior, family)
        decided[judge_on] = (logp[judge_on] + offsets).argmax(1)
    return decided


def gain_evidence(metric: str, y: np.ndarray, small: np.ndarray, big: np.ndarray, num_classes: int,
                  groups: np.ndarray | None = None, draws: int = EVIDENCE_DRAWS) -> tuple[float, float]:
    """(gain, lower bound): `metric` of decisions `big` minus that of `small` on the same images, and
    the (1 - EVIDENCE_LEVEL) quantile of that gain over bootstrap resamples of `groups` (each image
    its own group when None). Deterministic: the resamples come from a fixed seed."""
    k = num_classes
    _, group_of = np.unique(np.arange(len(y)) if groups is None else np.asarray(groups), return_inverse=True)
    group_of = group_of.reshape(-1)
    n_groups = int(group_of.max()) + 1
    cells = [y * k + d for d in (small, big)]  # each image's confusion cell under each decision vector

    def metrics(image_weight=None) -> np.ndarray:
        return metric_of_confusions(metric, np.stack([np.bincount(c, weights=image_weight, minlength=k * k)
                                                      for c in cells]).reshape(2, k, k))

    value = metrics()
    rng = np.random.default_rng(0)
    gains = np.empty(draws)
    for draw in range(draws):  # a resample of whole groups: each image weighs as often as its group was drawn
        weight = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        resampled = metrics(weight[group_of].astype(np.float64))
        gains[draw] = resampled[1] - resampled[0]
    return float(value[1] - value[0]), float(np.quantile(np.nan_to_num(gains), 1 - EVIDENCE_LEVEL))


def training_log_prior(train_labels: np.ndarray | None, num_classes: int) -> np.ndarray:
    """log of the training split's class frequencies (+0.5 each: no class has probability 0); uniform without labels."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes) if train_labels is not None \
        else np.ones(num_classes)
    return np.log((counts + 0.5) / (counts.sum() + 0.5 * num_classes))


def fit_rule(y_val: np.ndarray, probs_val: np.ndarray, metric: str, train_labels: np.ndarray | None = None,
             family: str | None = None, groups: np.ndarray | None = None) -> dict:
    """The rule (a plain dict, stored in the model file) maximising `metric` on validation.

    `train_labels` give the prior whose correction step 1 scales (absent: uniform). The family is
    chosen by cross-validation inside validation (module docstring), on halves that keep each of
    `groups` (validation's groups, when known) whole, then fitted on all of it; `family` forces one."""
    if metric not in METRICS:
        raise ValueError(f"unknown decision metric {metric!r}; one of {', '.join(METRICS)}")
    y = np.asarray(y_val, dtype=np.int64)
    logp = log_probs(probs_val)
    num_classes = logp.shape[1]
    log_prior = training_log_prior(train_labels, num_classes)
    rule = {"metric": metric, "family": "argmax", "tau": 0.0, "offsets": [0.0] * num_classes, "refined": [],
            "held_out_gain": {}, "val_argmax": None, "val_rule": None,
            "why": "argmax: validation holds fewer than two classes"}
    if len(y) == 0 or len(np.unique(y)) < 2:
        return rule
    if family is not None:
        rule["family"] = family
    halves = validation_halves(y, groups)
    notes = []
    for bigger in () if family is not None else ("own",) if num_classes == 2 else ("prior", "own"):
        kept = _held_out_decisions(metric, y, logp, log_prior, rule["family"], halves)
        tried = _held_out_decisions(metric, y, logp, log_prior, bigger, halves)
        if kept is None or tried is None:
            notes.append(f"{FAMILY_NAMES[bigger]} not tried (a validation half lacks a class)")
            break
        gain, lower = gain_evidence(metric, y, kept, tried, num_classes, groups)
        rule["held_out_gain"][bigger] = {"gain": round(gain, 6), "lower_95": round(lower, 6)}  # over the family kept so far
        accepted = gain > 0 and lower > 0
        notes.append(f"{FAMILY_NAMES[bigger]} {gain:+.4f} (95% lower bound {lower:+.4f}: "
                     + ("evidence)" if accepted else "within the noise)"))
        if accepted:
            rule["family"] = bigger
    rule["why"] = (f"{FAMILY_NAMES[family]}, as asked" if family is not None else
                   f"{FAMILY_NAMES[rule['family']]}: {metric} gained on held-out validation halves by "
                   + "; ".join(notes))
    tau, offsets, refined = _fit_offsets(metric, y, logp, log_prior, rule["family"])
    rule.update(tau=tau, offsets=[float(v) for v in offsets], refined=refined,
                val_argmax=_value(metric, y, logp), val_rule=_value(metric, y, logp + offsets))
    return rule
