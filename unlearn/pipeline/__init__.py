"""One run as a small package of stages (DESIGN.md, "The pipeline"):

- `request`: the data set and the forget request;
- `store`: originals and oracles, their identities (cache keys), published checkpoints; `beside` trains an original
  in a second process beside the oracle, `populations` trains population members stacked and computes the
  population metrics;
- `method_stage`: the method, timed, and the artifacts it asks for;
- `trajectory`: the method's loop looked into (method.eval_every), its evaluation kept out of the RTE;
- `selection`: the validation request, its oracle, and the checkpoint chosen on it (method.select=best_val);
- `evaluation`: metrics, reference metrics and attacks;
- `step`: everything one request gets, ending in its row;
- `experiment`: the stages composed from a config, refusing bad input before anything trains.
"""
from unlearn.pipeline.experiment import Artifacts, Experiment, save_model
from unlearn.pipeline.populations import finite_model
from unlearn.pipeline.step import Step
from unlearn.pipeline.store import state_dict

__all__ = ["Artifacts", "Experiment", "Step", "finite_model", "save_model", "state_dict"]
