"""The `tlpipe` command: the verbs that are not pipeline stages."""

import argparse
import sys
from pathlib import Path

import pandas as pd

from tlpipe import __version__, params, presets
from tlpipe.atomic import refuse_overwriting_inputs
from tlpipe.errors import TlpipeError, user_message


def check(args: argparse.Namespace) -> None:
    """Validate params.yaml, and look at a path: source as the pipeline will: its classes and
    images, the files left out and the split it would make. Nothing is copied or written."""
    from tlpipe.data.tracking import preview

    loaded = params.load(args.params)
    print(f"{args.params}: ok (data.source = {loaded.data.source}, backbone = {loaded.backbone.name})")
    print("\n".join(preview(loaded.data, loaded.split, Path(args.params).parent)))


def source(args: argparse.Namespace) -> None:
    """Where the data comes from. Without SOURCE: what data.source names, what the last run used
    (metrics/data.json) and whether newer data waits upstream. With SOURCE (path:FOLDER_OR_ARCHIVE,
    url:URL, kaggle:OWNER/NAME[/VERSION], sklearn:digits): point data.source at it, and data.track,
    what DVC hashes to see new data, with it; a Kaggle data set is pinned to its newest version.
    --update: pin Kaggle's newest version (a folder or URL needs none: `dvc repro` takes in changes)."""
    from tlpipe.data import tracking

    if args.source and args.update:
        raise TlpipeError("tlpipe source: give SOURCE or --update, not both.")
    if args.source is None and args.sha256 is not None:
        raise TlpipeError("tlpipe source: --sha256 goes with a SOURCE (the url: or path: archive it checks).")
    if args.source or args.update:  # setting a source mends a data.track that no longer matches
        changes = (tracking.set_source(args.source, Path(args.params), args.sha256) if args.source
                   else tracking.update(params.load(args.params).data, Path(args.params)))
        for key, (old, new) in changes.items():
            print(f"{key}: {old!r} -> {new!r}")
        print(f"{args.params}: {'unchanged' if not changes else 'updated'}; `dvc repro` takes the data in.")
        return
    print("\n".join(tracking.report(params.load(args.params).data, tracking.recorded())))


def preset(args: argparse.Namespace) -> None:
    """Merge a preset's params into params.yaml, keeping its comments. Without NAME, list the
    presets with their sources and the published figures they compete with."""
    if args.name is None:
        print("\n\n".join(presets.describe(name) for name in presets.names()))
        return
    if args.set_args:
        print("dvc exp run " + " ".join(presets.set_args(args.name, args.source)))
        return
    changes = presets.apply(args.name, args.params, args.source)
    for key, (old, new) in changes.items():
        print(f"{key}: {old!r} -> {new!r}")
    print(f"{args.params}: preset '{args.name}' applied ({len(changes)} changes); run `dvc repro`.")


def predict(args: argparse.Namespace) -> None:
    """Classify image files, folders (searched recursively) and zip/tar archives with
    models/model.pt alone. Writes one CSV row per readable image: path, predicted class,
    probability per class; the predicted class is decided by the model's rule, fitted on
    validation for evaluate.decision_metric (for two classes a threshold). Unreadable or
    non-image files are listed with the reason, never fatal."""
    from tlpipe.model.decision import describe
    from tlpipe.use.predict import predict as run_predict
    from tlpipe.use.predictions import write_table
    from tlpipe.runtime import pick_device, share_cpu, tune_malloc

    tune_malloc()
    share_cpu()
    refuse_overwriting_inputs([args.out, skipped_csv_path(args.out)], [*args.paths, args.model])
    table, skipped, meta = run_predict(args.paths, args.model, args.batch_size, pick_device(args.device), args.flip_tta)
    if not len(table):
        reasons = "; ".join(f"{item['path']}: {item['reason']}" for item in skipped[:5])
        raise TlpipeError(f"predict: no readable image among the given paths ({reasons}); {args.out} was not written.")
    write_table(table, args.out)
    print(f"predict: {len(table)} images -> {args.out} (decision: {describe(meta['rule'], meta['classes'])})")
    if skipped:
        skipped_csv = skipped_csv_path(args.out)
        write_table(pd.DataFrame(skipped), skipped_csv)
        print(f"predict: {len(skipped)} files skipped, listed in {skipped_csv}:", file=sys.stderr)
        for item in skipped[:20]:
            print(f"  {item['path']}: {item['reason']}", file=sys.stderr)


def skipped_csv_path(out: str) -> Path:
    return Path(out).with_suffix(".skipped.csv")


def export(args: argparse.Namespace) -> None:
    """Export models/model.pt as a model that maps (N, 3, H, W) RGB floats in [0, 1] to class
    probabilities, check it against PyTorch on the test split (max difference 1e-4), and write
    the preprocessing beside it as OUT.json."""
    from tlpipe.use.export import export as run_export

    sidecar = run_export(args.model, args.format, args.out, args.cache)
    checked = sidecar["checked"]
    print(f"export: {sidecar['model']} ({args.format}) matches PyTorch within {checked['max_abs_difference']:.1e} "
          f"on {checked['on']}; preprocessing in {sidecar['model']}.json")


def lr_find(args: argparse.Namespace) -> None:
    """The range test finetune runs with finetune.lr: auto (the same model, data, seed and
    finetune.lr_find_* settings, so the same curve), shown as text and written as JSON; needs
    data/cache and data/features (dvc repro extract-features)."""
    from tlpipe.atomic import write_json
    from tlpipe.runtime import pick_device, seed_everything, share_cpu, tune_malloc
    from tlpipe.train.lr_find import text_chart
    from tlpipe.train.session import prepare

    tune_malloc()
    share_cpu()
    p = params.load(args.params)
    seed_everything(p.finetune.seed, p.finetune.deterministic)
    session = prepare(p, pick_device(p.finetune.device), find_lr=True)
    write_json(args.out, session.lr_curve.rows)
    print(text_chart(session.lr_curve, session.choices["lr_find"]["suggested_lr"]))
    print(f"lr-find: curve of {len(session.lr_curve.rows)} steps -> {args.out} (columns lr, log10_lr, loss, "
          "smoothed_loss); finetune.lr: auto trains with the suggested rate.")


def compare(args: argparse.Namespace) -> None:
    """Without REV: every experiment of the current commit (`dvc exp show --json`). Each row:
    backbone, strategy, head, size, epochs, lr against the fine-tuned model's validation and
    test accuracy, balanced accuracy, log loss, macro precision/recall/F1, kappa, ROC AUC, and
    the wall times of train-head and finetune, read from the metrics files of that revision.
    The three best by test accuracy are compared pairwise on the same test images (McNemar's
    exact test): the table says which differences are beyond chance. Writes OUT/comparison.md,
    .csv and a bar chart .png."""
    from tlpipe.experiments.compare import PAIRED_TITLE, markdown, paired, table, write

    frame = table(args.revisions)
    pairs = paired(frame, Path("."))
    frame = frame.drop(columns="full_rev")
    paths = write(frame, args.out, pairs)
    print(markdown(frame), end="")
    if len(pairs):
        print(f"\n{PAIRED_TITLE}\n{markdown(pairs)}", end="")
    print(f"compare: {len(frame)} runs -> {paths['markdown']}, {paths['csv']}, {paths['chart']}")


def tune(args: argparse.Namespace) -> None:
    """A validation-only search: every point of the grid (--space KEY=V1,V2 ..., default
    finetune.aug_scale_min=0.35,0.8 finetune.epochs=8,12 finetune.lr=0.002,auto) is queued as a DVC
    experiment of the finetune stage alone, so the test split is never read; the queue runs them,
    each is scored by its fine-tuned model's validation figure (--metric, from its
    metrics/finetune.json), and the table and the best point are written to OUT; --apply writes the
    best point's values into params.yaml, then `dvc repro` trains and evaluates it."""
    from tlpipe.params_edit import merge_values
    from tlpipe.experiments.tune import DEFAULT_SPACE, parse_space, search, table, write

    if Path(args.out).is_dir():
        raise TlpipeError(f"tune: --out {args.out} is a folder; give the file to write, e.g. {Path(args.out) / 'tune.json'}.")
    space = parse_space(args.space or [f"{k}={','.join(map(str, v))}" for k, v in DEFAULT_SPACE.items()],
                        params.as_dict(params.load("params.yaml")))
    points, winner = search(space, args.metric, args.jobs)
    print(table(points, winner, args.metric), end="")
    path = write(points, winner, args.metric, Path(args.out))
    print(f"tune: best {winner.name} ({' '.join(f'{k}={v}' for k, v in winner.values.items())}), "
          f"{args.metric} {winner.score:.4f} on validation -> {path}")
    if args.apply:
        changed = merge_values(winner.values, "params.yaml", f"tune's best point {winner.name}")
        print(f"tune: params.yaml: {', '.join(f'{k} {old} -> {new}' for k, (old, new) in changed.items()) or 'unchanged'}"
              "; `dvc repro` trains and evaluates it.")


def cv(args: argparse.Namespace) -> None:
    """k-fold cross-validation for small data sets: --folds K (default: split.folds, else 5) DVC
    experiments of the pipeline up to evaluate, each with split.fold=I, so fold I is that run's
    validation split and every choice of the run is made on it, while the test split is the same for
    all and read by evaluate alone. Stages a fold shares with an earlier run come from DVC's
    run-cache. Writes OUT/cv.json (every test figure per fold, mean, SD, min, max; out-of-fold
    figures), OUT/cv.md and OUT/oof_predictions.csv (each image outside the test split predicted by
    the fold model that did not train on it)."""
    from tlpipe.experiments.cv import aggregate, markdown, run_folds, write

    folds = args.folds or params.load("params.yaml").split.folds or 5
    if Path(args.out).is_file():
        raise TlpipeError(f"cv: --out {args.out} is a file; give a folder to write into, e.g. outputs/cv.")
    names = run_folds(folds, args.jobs)
    record, oof = aggregate(names)
    paths = write(record, oof, Path(args.out))
    print(markdown(record), end="")
    ran = sorted({stage for run in record["runs"] for stage in run["stages_run"]})
    print(f"cv: {folds} folds ({', '.join(names)}); stages run: {', '.join(ran) or 'none (all from the run-cache)'} "
          f"-> {paths['record']}, {paths['table']}, {paths['out_of_fold']}")


def plots_template(args: argparse.Namespace) -> None:
    """Write the HTML page template that `dvc plots show` fills (named in .dvc/config as
    plots.html_template), with vega, vega-lite and vega-embed inline from vl-convert-python, so
    plots render with no network."""
    from tlpipe.use.offline_html import versions, write_template

    path = write_template(Path(args.out))
    v = versions()
    print(f"plots-template: {path} (vega {v['vega']}, vega-lite {v['vega-lite']}, vega-embed {v['vega-embed']} "
          f"inline, from vl-convert-python {v['vl-convert-python']})")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def _default(help_text: str) -> str:
    return f"{help_text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def verb(name, func, help_text, **arguments) -> argparse.ArgumentParser:
        """A verb described by its function's docstring, whose options are `flag=(default, help)` pairs
        ('--' and '-' derived from the name)."""
        sub = verbs.add_parser(name, help=help_text, description=func.__doc__ and " ".join(func.__doc__.split()))
        sub.set_defaults(func=func)
        for option, (default, option_help) in arguments.items():
            sub.add_argument("--" + option.replace("_", "-"), default=default,
                             help=_default(option_help) if default is not None else option_help)
        return sub

    verb("check", check, "validate params.yaml without running anything", params=("params.yaml", "params file"))

    source_parser = verb(
        "source", source, "show or set where the data comes from (data.source, data.track)",
        params=("params.yaml", "params file"),
        sha256=(None, "with SOURCE: the archive's expected SHA-256 (data.sha256), checked before it is used"))
    source_parser.add_argument("source", nargs="?", metavar="SOURCE",
                               help="path:FOLDER_OR_ARCHIVE, url:URL, kaggle:OWNER/NAME[/VERSION] or sklearn:digits")
    source_parser.add_argument("--update", action="store_true", help="pin the newest version of a Kaggle data set")

    preset_parser = verb(
        "preset", preset, "apply a named data set preset to params.yaml (no NAME: list them)",
        source=(None, "data.source to use instead of the preset's Kaggle one, e.g. path:/data/chest-xray-pneumonia.zip"),
        params=("params.yaml", "params file"))
    preset_parser.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(presets.names())}")
    preset_parser.add_argument("--set-args", action="store_true",
                               help="print `dvc exp run -S ...` for the preset instead of editing params.yaml")

    predict_parser = verb(
        "predict", predict, "classify new images with a trained model",
        model=("models/model.pt", "model file"),
        out=("outputs/predictions.csv", "CSV to write; skipped files go to OUT.skipped.csv"))
    predict_parser.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder or zip/tar archive")
    predict_parser.add_argument("--batch-size", type=positive_int, default=64, help=_default("images per batch"))
    predict_parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                                help=_default("auto uses the GPU when there is one"))
    predict_parser.add_argument("--flip-tta", action="store_true",
                                help="average the predictions of each image and its mirror")

    export_parser = verb(
        "export", export, "export the model to TorchScript or ONNX",
        model=("models/model.pt", "model file"),
        out=(None, "output file (default: models/model.torchscript.pt or models/model.onnx)"),
        cache=("data/cache", "cache folder whose test split is used for the check"))
    export_parser.add_argument("--format", required=True, choices=("torchscript", "onnx"))

    verb("lr-find", lr_find, "run the learning-rate range test and show its curve, without training",
         params=("params.yaml", "params file"), out=("outputs/lr_find.json", "curve to write"))

    compare_parser = verb(
        "compare", compare, "one table of experiments (or branches/commits): params against val/test metrics",
        out=("outputs/comparison", "folder to write to"))
    compare_parser.add_argument("revisions", nargs="*", metavar="REV", help="branches, tags, commits or experiment names")

    tune_parser = verb(
        "tune", tune, "search a small space of the recipe on validation alone, as DVC experiments",
        metric=("val_balanced_accuracy", "validation figure of metrics/finetune.json to rank by "
                "(val_balanced_accuracy, val_accuracy, val_loss, val_quadratic_kappa, val_decision_metric)"),
        out=("outputs/tune.json", "table and best point to write"))
    tune_parser.add_argument("--space", action="append", metavar="KEY=V1,V2",
                             help="one axis of the grid (repeat for more); default: augmentation, epochs, lr")
    tune_parser.add_argument("--jobs", type=positive_int, default=1, help=_default("experiments run at once"))
    tune_parser.add_argument("--apply", action="store_true", help="write the best point's values into params.yaml")

    cv_parser = verb(
        "cv", cv, "k-fold cross-validation: one DVC experiment per fold, then mean ± SD of every test figure",
        out=("outputs/cv", "folder to write to"))
    cv_parser.add_argument("--folds", type=positive_int, default=None,
                           help="number of folds, at least 2 (default: split.folds in params.yaml, else 5)")
    cv_parser.add_argument("--jobs", type=positive_int, default=1, help=_default("experiments run at once"))

    verb("plots-template", plots_template, "write the offline HTML template of `dvc plots show`",
         out=(".dvc/plots/offline.html", "file to write"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted: nothing was written.", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
