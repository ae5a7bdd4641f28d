"""SalUn: random labelling restricted to the salient weights (RL with `mask` = saliency by default).

The mask keeps the top `mask_ratio` of all parameters ranked globally by |Σ ∇(−loss on forget)| (model in
eval mode). Only those weights move: gradients are masked, and after every step the others are restored
to θo with their momentum zeroed — the reference let weight decay and momentum move them (fixed here).
The mask mechanism is every gradient method's (`unlearn/methods/base.py`, `masks.py`).
"""
from unlearn.methods.rl import RandomLabel


class SalUn(RandomLabel):
    name = "salun"
    default_mask = "saliency"
