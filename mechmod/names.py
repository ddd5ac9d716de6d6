"""Every name a user picks from, defined once.

The modules that act on these names import them from here, and the CLI's
``click.Choice`` lists read the same tuples, so a new backend, measure or
span is named in one place (and implemented in its module). Pure data: no
imports, safe to import from anywhere.
"""

#: tracing and intervention backends (mechmod.tracing, mechmod.interventions.core)
BACKENDS = ("hooks", "nnsight", "transformer_lens")

#: prompt spans an adapter marks in ``Encoded.spans`` (mechmod.models.base)
SPANS = ("image", "description", "question", "template", "last")
#: spans whose answer-position attention mass a run records (mechmod.tracing.span_mass)
ATTENTION_SPANS = ("image", "description", "question")
#: position groups a patch covers: a span, or ``all`` of them (mechmod.interventions.patching)
POSITION_GROUPS = SPANS + ("all",)

#: unimodal uncertainty measures dHrel is computed from, in the order of
#: mechmod.uncertainty.UNCERTAINTY_MEASURES (entropy, label entropy, 1 - margin,
#: 1 - max probability, Renyi-2 entropy)
UNCERTAINTY_MEASURES = ("entropy", "label_entropy", "margin", "max_prob", "renyi2")
#: the opt-in index from k sampled answers per prompt (mechmod.uncertainty.sampled_entropy)
SAMPLED_MEASURE = "sampled_entropy"

#: read and edit sites within a decoder layer, in forward order (mechmod.backends.sites.Site)
SITE_COMPONENTS = ("resid_in", "mask", "scores", "z", "pattern", "attn", "attn_contrib", "mlp", "mlp_contrib",
                   "resid")
#: components a layer patch copies (mechmod.interventions.patching.PatchSpec)
PATCH_COMPONENTS = ("resid", "attn", "mlp")
#: patch directions, source -> conflict (mechmod.interventions.cases.DIRECTIONS)
PATCH_DIRECTIONS = ("V->C", "T->C", "I->C")
#: head and MLP knock-out modes (mechmod.interventions.heads)
KNOCKOUT_MODES = ("zero", "mean")
#: where a steering direction is added (mechmod.interventions.steering.SteerSpec)
STEER_POSITIONS = ("all", "last")
#: attention flows an attention knockout blocks, source span -> destination span (mechmod.interventions.flow)
FLOWS = ("image->last", "description->last", "question->last", "image->description", "image->question",
         "description->question")
#: where head scaling multiplies a head's output (mechmod.interventions.head_scaling)
HEAD_SCALE_POSITIONS = ("last", "all")
#: boundary-case fine-tuning (mechmod.interventions.finetune): the modality trained towards, the case
#: selections (near the balance point / the rest), and how the weights are trained
FINETUNE_TARGETS = ("vision", "text")
FINETUNE_SELECTIONS = ("boundary", "easy")
FINETUNE_SELECT_OPTIONS = FINETUNE_SELECTIONS + ("both",)  # `mechmod finetune --select`
FINETUNE_METHODS = ("full", "lora")

#: lenses a run decodes layers with (mechmod.lenses)
LENS_KINDS = ("logit", "tuned")
#: tuned-lens optimisers (mechmod.lenses.training)
LENS_OPTIMIZERS = ("sgd", "adam")
#: cases a lens is evaluated on (``mechmod lens eval``)
LENS_SPLITS = ("heldout", "all")

#: tasks of the rendered attribute set and of CLEVR (mechmod.data.attribute, mechmod.data.clevr)
ATTRIBUTE_TASKS = ("shape", "material")
#: task subsets a generator takes: one task or ``both``
ATTRIBUTE_SUBSETS = ATTRIBUTE_TASKS + ("both",)
#: the ``control`` column of a dataset (mechmod.data.schema)
CONTROLS = ("none", "text_irrelevant", "image_irrelevant")
#: controls written only when asked (never by default): ``consistent``, the description states the image's
#: colour in the conflict case's words (mechmod.data.color, `mechmod dataset color --consistent`)
OPT_IN_CONTROLS = ("consistent",)

#: colour-image distractor policies: the paper's rule (study datasets) and the organism's binding images
DISTRACTOR_POLICIES = ("paper", "binding")
