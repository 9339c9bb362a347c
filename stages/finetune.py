"""finetune: backbone + head end to end from data/cache/ -> models/model.pt + metrics + curves."""

import time

from tlpipe import params
from tlpipe.atomic import atomic_path, write_json
from tlpipe.data.cache import load_preprocess
from tlpipe.distributed import finish, from_env, init, process_count, relaunch
from tlpipe.model.decision import rule_summary
from tlpipe.model.decision_fit import fit_rule
from tlpipe.model.inference import image_probabilities
from tlpipe.model.modelfile import model_checkpoint, save_checkpoint
from tlpipe.train.finetune import augmented_batch, fit
from tlpipe.train.live import EpochLogger
from tlpipe.train.resume import Checkpoints, input_key
from tlpipe.train.session import prepare
from tlpipe.runtime import seed_everything, share_cpu, tune_malloc
from tlpipe.stage import run
from tlpipe.use.report import grid


def main() -> None:
    started = time.perf_counter()
    tune_malloc()
    threads = share_cpu()
    p = params.load()
    relaunch("finetune", process_count(p.finetune.processes, p.finetune.device))  # under torchrun
    ranks = from_env()
    device = init(p.finetune.device, ranks)
    seed_everything(p.finetune.seed, p.finetune.deterministic)
    log = print if ranks.is_main else (lambda line: None)
    session = prepare(p, device, log=log, ranks=ranks)
    cfg, model, classes = session.cfg, session.model, session.classes
    metric = p.evaluate.decision_metric
    # .tlpipe/resume/: the state after each epoch, resumed from after a kill when params and inputs match
    checkpoints = Checkpoints(input_key(cfg, p))
    # live/finetune/: per-epoch metrics and curves, rewritten after every epoch (by rank 0)
    live = EpochLogger(resume=checkpoints.resumable()) if ranks.is_main else None
    result = fit(model, session.train, session.val, cfg, len(classes), device, log=log, on_epoch=live,
                 decision_metric=metric, ranks=ranks, checkpoints=checkpoints)
    finish(ranks)
    if not ranks.is_main:
        return
    live.close()
    # The decision rule is fitted here, on validation, and stored in model.pt for every user of it.
    val_probs = image_probabilities(model, session.val.images, cfg.batch_size * 2, device)
    rule = fit_rule(session.val.labels, val_probs, metric, session.train.labels, groups=session.val.groups)
    checkpoint = model_checkpoint(model.cpu(), p.backbone.name, classes, load_preprocess("data/cache"),
                                  cfg, result.best_epoch, rule)
    images, labels = augmented_batch(session.train, cfg)  # a training batch as the model sees it
    batch = grid([(image, classes[label]) for image, label in zip(images, labels)])
    best = result.history[result.best_epoch] if result.history else {}
    if result.start is not None:
        session.choices.setdefault("chosen_on_val", {})
        session.choices["chosen_on_val"] |= {"probe_val_loss": result.start["val_loss"], "probe_val_accuracy": result.start["val_accuracy"],
                   "frozen_epochs_undone": result.kept_probe}
    early_stop = cfg.early_stop_metric
    kept_why = (f"the best {early_stop}" if result.best_epoch == result.best_value_epoch else
                f"the last epoch within the noise of epoch {result.best_value_epoch}'s best {early_stop}")
    write_json("metrics/finetune.json", {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                                         "best_value_epoch": result.best_value_epoch, "kept_because": kept_why,
                                         "threads": threads,
                                         **{k: v for k, v in best.items() if k != "step"}, **session.choices,
                                         "rule": rule_summary(rule, classes), "wall_s": round(time.perf_counter() - started, 1)})
    with atomic_path("plots/finetune/batch.png") as tmp:
        batch.save(tmp, format="PNG")
    # Always written (DVC declares it): the range test's curve with finetune.lr auto, else empty.
    write_json("plots/finetune/lr_find.json", session.lr_curve.rows if session.lr_curve else [])
    save_checkpoint(checkpoint, "models/model.pt")  # the model last: a stage that failed before leaves the old one
    checkpoints.clear()


if __name__ == "__main__":
    run(main)
