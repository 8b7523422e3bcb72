"""``hydra/sweeper=checked``: Hydra's basic sweeper without composing a job twice in the same process.

Before launching a batch, Hydra's basic sweeper composes every job of it once to catch composition errors early,
then the launcher composes each job again to run it: two compositions (about 0.1 s each) per trial. The sweep's
``runners.callbacks.SweepCallback`` has already composed and checked the jobs before the first one ran (Hydra's
composition, then the harness's type and choice checks), so this sweeper leaves out Hydra's early composition
for exactly those jobs and keeps it for every other one (sweeps larger than ``CHECK_EVERY_JOB_UP_TO`` jobs are
checked one job per swept value). Everything else (batching, ``params``, ``max_batch_size``, the launcher) is the
basic sweeper's.

Hydra finds sweepers only in the ``hydra_plugins`` namespace package; ``runners.benchmark`` puts the directory
that holds this one on ``sys.path`` (``runners.plugins.register``).
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from runners.callbacks import checked_jobs


class CheckedSweeper(BasicSweeper):
    """The basic sweeper; jobs the sweep's callback composed and checked are not composed again to validate."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        already = checked_jobs()
        super().validate_batch_is_legal([job for job in batch if tuple(job) not in already])
