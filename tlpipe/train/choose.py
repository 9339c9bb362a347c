"""Knobs chosen on validation instead of guessed: the logistic regression's C and a temperature.

With more features than images (1,280 EfficientNet features, a few hundred images per class) an L2
logistic regression at a fixed C separates the training set and its logits grow without bound; the
right C depends on the data. `choose_logreg` fits a small grid of C on the training features and keeps
the one with the lowest validation log loss; `fit_temperature` then rescales the logits by one scalar
fitted on validation (Guo et al. 2017), which changes no decision and only calibrates confidence.
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from torch import nn

from tlpipe.errors import TlpipeError

# Inverse regularisation strengths tried by `C: auto`, smallest (most regularised) first.
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
PATIENCE = 2  # stop the grid after this many Cs in a row without a lower validation loss (the curve is U-shaped)
VAL_ROWS = 1024  # validation features standardised and scored this many rows at a time


def _as_linear(scaler: StandardScaler, model: LogisticRegression, num_classes: int, num_features: int) -> nn.Linear:
    """The fitted model on standardised features, folded into one nn.Linear on the raw features."""
    coef, intercept = model.coef_, model.intercept_
    if num_classes == 2 and coef.shape[0] == 1:
        # scikit-learn keeps one row for two classes; softmax over [-z/2, z/2] equals sigmoid(z).
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    layer = nn.Linear(num_features, num_classes)
    with torch.no_grad():
        weight = coef / scale
        layer.weight.copy_(torch.from_numpy(weight).float())
        layer.bias.copy_(torch.from_numpy(intercept - weight @ scaler.mean_).float())
    return layer


def _full_proba(model: LogisticRegression, x: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba with a column for every class, also those absent from the training labels."""
    proba = np.zeros((len(x), num_classes))
    proba[:, model.classes_] = model.predict_proba(x)
    proba = np.clip(proba, 1e-15, 1.0)
    return proba / proba.sum(1, keepdims=True)


def _val_proba(model: LogisticRegression, scaler: StandardScaler, x_val: np.ndarray, num_classes: int) -> np.ndarray:
    """_full_proba of the validation features (a memory map), standardised VAL_ROWS rows at a time:
    validation grows with the data set, and only its probabilities are held."""
    parts = [_full_proba(model, scaler.transform(np.asarray(x_val[a:a + VAL_ROWS])), num_classes)
             for a in range(0, len(x_val), VAL_ROWS)]
    return np.concatenate(parts) if parts else np.zeros((0, num_classes))


def choose_logreg(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, num_classes: int,
                  C: float | str, balanced: bool, seed: int) -> tuple[nn.Linear, dict]:
    """L2 logistic regression on standardised features at `C`, or with C: 'auto' the C of C_GRID
    with the lowest validation log loss (fitted on the training split only). Returns the head and
    a report: the C used, for 'auto' the validation log loss of every C tried, and the training and
    validation loss at each C (C_path)."""
    if C == "auto" and not len(y_val):
        raise TlpipeError("C: auto chooses C on validation features, and none were given; set a number instead.")
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    grid = C_GRID if C == "auto" else (float(C),)
    # warm_start: each C starts from the previous solution, so the path costs little more than one fit
    model = LogisticRegression(max_iter=3000, class_weight="balanced" if balanced else None,
                               random_state=seed, warm_start=True)
    tried, path, best, since_best = {}, [], None, 0
    labels = list(range(num_classes))
    for value in grid:
        model.set_params(C=value)
        model.fit(xs, y)
        loss = float(log_loss(y_val, _val_proba(model, scaler, x_val, num_classes), labels=labels)) if len(y_val) else 0.0
        tried[value] = loss
        path.append({"C": value, "train_loss": float(log_loss(y, _full_proba(model, xs, num_classes), labels=labels)),
                     "val_loss": loss})
        if best is None or loss < best[1]:
            best, since_best = (value, loss, model.coef_.copy(), model.intercept_.copy()), 0
        else:
            since_best += 1
            if since_best >= PATIENCE:
                break
    model.coef_, model.intercept_ = best[2], best[3]
    report = {"C": best[0], "val_log_loss": best[1], "C_path": path}
    if C == "auto":
        report["C_grid"] = {f"{value:g}": loss for value, loss in tried.items()}
    return _as_linear(scaler, model, num_classes, x.shape[1]), report


def fit_temperature(logits: torch.Tensor, labels: np.ndarray) -> float:
    """The scalar T > 0 minimising the cross-entropy of logits / T on these labels (1-D, by LBFGS on log T)."""
    if len(labels) == 0:
        return 1.0
    logits = logits.detach().double()
    target = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return temperature if np.isfinite(temperature) and temperature > 0 else 1.0


def scale_linear(layer: nn.Linear, temperature: float) -> nn.Linear:
    """The same layer with its logits divided by `temperature` (in place)."""
    with torch.no_grad():
        layer.weight.div_(temperature)
        layer.bias.div_(temperature)
    return layer
