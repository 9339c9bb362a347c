"""Per-epoch metrics written as the epochs go, by DVCLive (DVC's logger), for DVC's tools to read.

After every epoch DVCLive rewrites `live/finetune/metrics.json` (the latest epoch: what
`dvc exp show` shows of a running experiment) and appends a row to one TSV per curve under
`live/finetune/plots/metrics/training/` (`step` = epoch, the convention of DVC's `linear`
template, which `dvc plots show` draws, mid-run too). dvc.yaml declares these files by hand:
`dvcyaml=False`, so DVCLive never writes dvc.yaml, and `save_dvc_exp=False`, so it never makes
an experiment of its own. The names sit under `training/` (columns `training.val_loss`, ...): they
are the argmax figures of the latest epoch as training goes, not the headline of the kept model.
Throughput and learning rate stay in the stage's log lines, out of the diffed metrics. A resumed
run appends to the curves of the interrupted one.
"""

from pathlib import Path

LIVE_DIR = Path("live/finetune")
CURVES = ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_quadratic_kappa")


class EpochLogger:
    """`on_epoch` for tlpipe.train.finetune.fit: one DVCLive step per epoch."""

    def __init__(self, directory: str | Path = LIVE_DIR, resume: bool = False):
        from dvclive import Live
        from scmrepo.exceptions import SCMError

        class LiveWithoutGit(Live):
            def _init_dvc(self):  # DVCLive asks Git for HEAD, which a repository without a commit lacks
                self._dvc_repo = None

        try:
            self.live = Live(str(directory), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)
        except SCMError:  # `git init` + `dvc repro` before the first commit: log the files all the same
            self.live = LiveWithoutGit(str(directory), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)

    def __call__(self, row: dict) -> None:
        self.live.step = row["step"]  # the epoch: a resumed run (tlpipe.train.resume) goes on where it was
        for name in CURVES:
            if name in row:
                self.live.log_metric(f"training/{name}", row[name])
        self.live.next_step()

    def close(self) -> None:
        self.live.end()
