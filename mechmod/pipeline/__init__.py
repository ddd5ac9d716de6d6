"""The whole study in one command (``mechmod study``): the behavioural run,
a tuned lens, patching, steering, direct logit attribution and attention
knockout on one dataset into one directory, each step skipped when
finished, then one index page linking every step's report.

Modules: :mod:`.steps` (each step: the library calls of one command),
:mod:`.run` (order, resume, failures, DIR/study.json), :mod:`.index`
(DIR/index.html).
"""

from mechmod.pipeline.run import STEP_NAMES, parse_steps, run_pipeline
from mechmod.pipeline.steps import STEPS, StudyOptions

__all__ = ["STEPS", "STEP_NAMES", "StudyOptions", "parse_steps", "run_pipeline"]
