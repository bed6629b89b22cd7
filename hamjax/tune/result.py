"""What a tune run returns: :class:`TuneResult`, its best trial, and the best trial as a recipe TOML."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


def best_trial(study, objectives) -> Any:
    """The study's best COMPLETE trial: the best value, or with several objectives the most accurate Pareto trial.

    Raises:
      ValueError: the study has no COMPLETE trial.

    Examples:
      >>> import optuna
      >>> study = optuna.create_study(direction="maximize")
      >>> study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
      >>> best_trial(study, ("accuracy",)).number == study.best_trial.number
      True
    """
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(f"tune: study {study.study_name!r} has no COMPLETE trial yet")
    if len(objectives) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (t.values[0], -t.number))


def recipe_of(space, values: dict, *, epochs: int, name: str = "tuned"):
    """The recipe that trains with ``values``: a recipe-based space's recipe with them filled in, else a train step.

    Trials train AdamW (:class:`hamjax.search.population.Population`), so a
    train step with weight decay is written with ``optimizer = "adamw"``;
    ``warmup_steps`` and ``mixup`` go to the train step, whose warm-up is
    followed by a cosine decay (a trial's ``schedule`` otherwise, said in the
    description when they differ); the train step's other fields (clipping)
    are the recipe's own, which the trials did not model.

    Args:
      space: the :class:`hamjax.tune.Space` searched.
      values: every name's value (searched and fixed).
      epochs: training epochs of the train step (when the recipe is built here).
      name: the recipe's name.

    Returns:
      A validated :class:`hamjax.recipes.Recipe` without search tables.

    Examples:
      >>> from hamjax.tune import Space
      >>> r = recipe_of(Space({"learning_rate": {"low": 1e-3, "high": 1e-1}}), {"learning_rate": 0.01}, epochs=2)
      >>> r.steps[0].params["learning_rate"], r.steps[0].params["optimizer"]
      (0.01, 'adamw')
    """
    from hamjax import recipes

    if space.recipe is not None:
        raw = space.recipe.to_dict()
        for entry in raw["steps"]:
            entry.pop("search", None)
        for key, (index, field) in space.targets.items():
            raw["steps"][index][field] = values[key]
        for entry in raw["steps"]:  # the trials trained AdamW: decoupled decay, not adam's L2
            if entry["kind"] == "train" and entry.get("optimizer") == "adam" and entry.get("weight_decay"):
                entry["optimizer"] = "adamw"
        raw["description"] = f"{raw['description']} (searched fields set to the best trial of a tune run)".strip()
        return recipes.validate(raw)
    train = {"kind": "train", "epochs": int(epochs), "optimizer": "adamw"}
    for key in ("learning_rate", "weight_decay", "label_smoothing", "batch_size", "warmup_steps", "mixup"):
        if key in values:
            train[key] = values[key]
    if "augment" in values:
        train["augment"] = f"randaugment={values['augment']}"
    steps = [train]
    if "sparsity" in values:
        steps.append({"kind": "prune", "method": "magnitude", "sparsity": values["sparsity"]})
    if "bits" in values:
        steps.append({"kind": "quantize", "method": "weight_only", "bits": int(values["bits"])})
    description = "The best trial of a tune run: " + ", ".join(f"{k} = {v}" for k, v in values.items())
    if "schedule" in values and (values["schedule"] == "cosine") != bool(values.get("warmup_steps")):
        description += (
            "; the train step decays by cosine only after a warm-up, so its schedule differs from the trial's"
        )
    return recipes.validate({"name": name, "description": description, "steps": steps})


@dataclasses.dataclass
class TuneResult:
    """The outcome of :func:`hamjax.tune.run`.

    Attributes:
      study: the ``optuna.Study`` (every trial, with storage, for plots and the dashboard).
      space: the :class:`hamjax.tune.Space` searched.
      objectives: the objective names, accuracy first.
      epochs: a trial's training epochs.
      execution: how the member axis ran (recorded in the study).
      trials_run: trials this call finished (COMPLETE, PRUNED or FAIL).
      member_epochs: member-epochs this call trained (what pruning saves).
      stopped: ``"budget"``, or ``"converged"`` when the convergence stop ended the search.
      seconds: wall-clock seconds of the call.
    """

    study: Any
    space: Any
    objectives: tuple[str, ...]
    epochs: int
    execution: str
    trials_run: int
    member_epochs: int
    stopped: str
    seconds: float

    @property
    def best_trial(self):
        """The best COMPLETE trial (:func:`best_trial`)."""
        return best_trial(self.study, self.objectives)

    @property
    def best_params(self) -> dict:
        """The best trial's values, searched and fixed."""
        return self.space.values(self.best_trial.params)

    @property
    def best_values(self) -> dict:
        """The best trial's objective values by name."""
        return dict(zip(self.objectives, self.best_trial.values, strict=True))

    def recipe(self, name: str = "tuned"):
        """The best trial as a :class:`hamjax.recipes.Recipe` (:func:`recipe_of`)."""
        return recipe_of(self.space, self.best_params, epochs=self.epochs, name=name)

    def write_recipe(self, path: str | os.PathLike, name: str = "tuned") -> Path:
        """Write the best trial as a recipe TOML (atomically) that ``hamjax optimize --recipe PATH`` runs.

        Args:
          path: a ``.toml`` path; its folder is created.
          name: the recipe's name.

        Returns:
          The path written.
        """
        from hamjax import recipes

        return recipes.save(self.recipe(name), path)
