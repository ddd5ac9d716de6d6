"""Causal interventions: activation patching and preference steering.

Each intervention is a small config plus a small module over one generic
batched sweep (:func:`core.sweep`, a setter and a metric) that runs with
the nnsight or the TransformerLens backend::

    core        Site, forward(mllm, inputs, edits, reads, backend), sweep(...)
    patching    PatchSpec, align_positions, patch_layers, metrics, summaries
    resume      record, sweep_resumed: residual patches resumed at the patched layer
    heads       Unit, units, patch_units, knockout_units, mean_outputs, classify_units
    steering    SteerSpec, preference_direction, steer, run_steering
    cases       baseline (clean answers), standard_pairs (V->C, T->C, I->C)
    patch_study run_patching (the dataset-level study behind `mechmod patch`)
"""

from mechmod.interventions.core import Site, forward, sweep
from mechmod.interventions.heads import Unit, classify_units, knockout_units, patch_units, units
from mechmod.interventions.patching import (PatchSpec, align_positions, critical_window, first_layer_reaching,
                                            flip_rate, patch_layers, restoration)
from mechmod.interventions.steering import SteerSpec, preference_direction, steer

__all__ = ["Site", "forward", "sweep", "PatchSpec", "align_positions", "patch_layers", "flip_rate", "restoration",
           "first_layer_reaching", "critical_window", "Unit", "units", "patch_units", "knockout_units",
           "classify_units", "SteerSpec", "preference_direction", "steer"]
