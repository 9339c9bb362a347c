"""One self-contained HTML page per run, to attach to a paper or a ticket.

The headline table, the charts drawn offline as inline SVG (Vega-Lite specs rendered by
vl-convert-python, no browser and no network), the top-loss and Grad-CAM sheets inline as PNG,
the params that shape the result and the data set's split summary. It needs no other file.
"""

import base64
import html

DRAW_WIDTH, DRAW_HEIGHT = 260, 220


def _svg(spec: dict) -> str:
    import vl_convert

    spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", **spec}
    return vl_convert.vegalite_to_svg(spec)


def confusion_svg(rows: list[dict], title: str) -> str:
    """rows: DVC's confusion rows {actual, predicted}, one per image."""
    return _svg({
        "title": title, "data": {"values": rows},
        "transform": [{"aggregate": [{"op": "count", "as": "images"}], "groupby": ["actual", "predicted"]}],
        "encoding": {"x": {"field": "predicted", "type": "nominal", "title": "predicted"},
                     "y": {"field": "actual", "type": "nominal", "title": "actual"}},
        "layer": [{"mark": "rect", "encoding": {"color": {"field": "images", "type": "quantitative",
                                                          "scale": {"scheme": "blues"}, "title": "images"}}},
                  {"mark": {"type": "text", "fontSize": 11}, "encoding": {"text": {"field": "images"}}}],
        "width": DRAW_WIDTH, "height": DRAW_HEIGHT})


def lines_svg(series: dict[str, list[dict]], x: str, y: str, title: str, x_title: str, y_title: str) -> str:
    """series: {name: rows holding x and y}, drawn as one line each."""
    values = [{x: row[x], y: row[y], "series": name} for name, rows in series.items() for row in rows
              if row.get(y) is not None]
    return _svg({
        "title": title, "data": {"values": values}, "mark": {"type": "line", "point": True},
        "encoding": {"x": {"field": x, "type": "quantitative", "title": x_title},
                     "y": {"field": y, "type": "quantitative", "title": y_title, "scale": {"zero": False}},
                     "color": {"field": "series", "type": "nominal", "title": None}},
        "width": DRAW_WIDTH, "height": DRAW_HEIGHT})


def _table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _with_interval(figures: dict, name: str):
    value, band = figures.get(name), figures.get(f"{name}_95")
    return f"{value:.4f} ({band[0]:.3f}-{band[1]:.3f})" if value is not None and band else value


def headline_table(headline: dict) -> str:
    """The headline figures; a test figure with its 95% interval in brackets."""
    names = [n for n in headline["finetuned"]["val"]]
    rows = [[f"{model} {split}"] + [_with_interval(headline[model][split], n) for n in names]
            for model in ("finetuned", "head") for split in ("val", "test")]
    rows.append(["majority baseline test", headline["baseline"]["test"]["accuracy"]] + [None] * (len(names) - 1))
    return _table(["model, split"] + names, rows)


def split_table(split: dict) -> str:
    counts = split.get("counts", {})
    classes = sorted({c for per in counts.values() for c in per})
    rows = [[name] + [counts.get(name, {}).get(c, 0) for c in classes] + [split.get("total", {}).get(name)]
            for name in ("train", "val", "test")]
    return _table(["split"] + classes + ["total"], rows)


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def page(title: str, headline: dict, params: dict[str, object], split: dict, charts: list[str],
         images: dict[str, bytes], data: dict, choices: dict[str, str], confused: list[dict]) -> str:
    """The whole page; charts: inline SVG strings; images: {caption: PNG bytes}; data: the data's
    identity (metrics/data.json); choices: {what was chosen on validation: what and why};
    confused: the most confused (true, predicted) pairs of the test split with their counts."""
    params_rows = [[k, v] for k, v in params.items()]
    wall = headline.get("wall_s", {})
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Headline</h2><p>Accuracy, balanced accuracy, sensitivity and specificity under the decision rule "
        "stored in the model (the one <code>tlpipe predict</code> uses); <code>accuracy_argmax</code> beside them "
        "where the rule differs. Test figures carry their 95% interval in brackets (a bootstrap over the test "
        "images, whole patients or near-duplicate groups resampled together; Wilson's interval for accuracy, "
        "sensitivity and specificity of independent images): two runs whose intervals overlap widely may not "
        f"differ. Best epoch of fine-tuning: {headline['finetuned'].get('best_epoch')}.</p>",
        headline_table(headline),
        "<ul>" + "".join(f"<li><b>{html.escape(what)}</b>: {html.escape(why)}</li>" for what, why in choices.items())
        + "</ul>",
        "<h2>Most confused classes (test split)</h2>"
        + (_table(["true", "predicted", "images"], [[c["true"], c["predicted"], c["images"]] for c in confused])
           if confused else "<p>No test image was misclassified.</p>"),
        "<h2>Charts</h2><div class='charts'>" + "".join(f"<div>{c}</div>" for c in charts) + "</div>",
        *[f"<h2>{html.escape(caption)}</h2>{_png(data, caption)}" for caption, data in images.items()],
        "<h2>Params that shape the result</h2>" + _table(["param", "value"], params_rows),
        "<h2>Data: where it came from (metrics/data.json)</h2>" + _table(["", "value"], list(map(list, data.items()))),
        "<h2>Data: images per split and class</h2>" + split_table(split),
        "<h2>Wall time per stage (s)</h2>" + _table(list(wall), [list(wall.values())]),
    ]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f0f0f0}.charts{display:flex;flex-wrap:wrap;gap:12px}"
             "img{max-width:100%;border:1px solid #ddd}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
