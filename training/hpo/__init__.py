"""Hyperparameter search on the tuned feed: ``python -m training.hpo`` (Optuna; extra ``feedbench[hpo]``).

``training.hpo.space`` reads the search space, ``training.hpo.trial`` turns a trial's values into a
``training.fit`` run, ``training.hpo.study`` runs and resumes the Optuna study, ``training.hpo.report``
writes what it found. ``run_study(HpoConfig(...))`` is the library entry.
"""
from training.hpo.config import HpoConfig


def run_study(config: HpoConfig, pruner=None) -> dict:
    """See ``training.hpo.study.run_study``: imports Optuna only when a search runs."""
    from training.hpo.study import run_study as run

    return run(config, pruner)


__all__ = ["HpoConfig", "run_study"]
