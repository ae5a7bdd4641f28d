"""The default scenario: one forget request, one row (the pipeline's own run)."""
from __future__ import annotations

from typing import Any

from unlearn.pipeline import Experiment


class Single:
    name = "single"
    knobs: dict = {}

    def run(self, experiment: Experiment, **kwargs: Any) -> dict[str, Any]:
        return experiment.run(**kwargs)
