"""Answers are words: a :class:`LabelSet` maps each answer label ("blue")
to every token of the tokenizer at hand that begins it (case variants,
with and without a leading space, the first piece of a multi-piece word).

A prediction is the label of the top-1 token, or ``other``; a label's
probability is the sum of its variants' probabilities (float32 softmax
over the whole vocabulary). A token claimed by two labels (e.g. a shared
first piece "gre" of "green" and "grey") belongs to neither, so a
prediction is never ambiguous; it is listed in ``ambiguous``."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from mechmod.errors import MechmodError

OTHER = "other"


def _variants(label: str) -> list[str]:
    forms = dict.fromkeys([label, label.lower(), label.capitalize(), label.upper()])
    return [p + f for f in forms for p in ("", " ")]


def _first_token(tokenizer, text: str, special: set[int]) -> int | None:
    """The token that begins ``text`` (skipping pure-whitespace pieces), if
    it really is a prefix of the word."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    word = text.strip()
    for tid in ids:
        if tid in special:
            return None
        piece = tokenizer.decode([tid]).strip()
        if not piece:
            continue
        return tid if word.startswith(piece) else None
    return None


class LabelSet:
    """The candidate labels of a task, resolved against one tokenizer."""

    def __init__(self, tokenizer, labels: Sequence[str]):
        labels = [str(x) for x in labels]
        if not labels or len(set(labels)) != len(labels):
            raise MechmodError(f"LabelSet needs distinct labels, got {labels}")
        if OTHER in labels:
            raise MechmodError(f"{OTHER!r} is reserved for answers outside the label set")
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        if tokenizer.unk_token_id is not None:
            special.add(tokenizer.unk_token_id)
        claims: dict[int, set[str]] = {}
        for label in labels:
            for form in _variants(label):
                tid = _first_token(tokenizer, form, special)
                if tid is not None:
                    claims.setdefault(tid, set()).add(label)
        self.labels = labels
        self.ambiguous = sorted(t for t, owners in claims.items() if len(owners) > 1)
        self._ids = {lab: sorted(t for t, owners in claims.items() if owners == {lab}) for lab in labels}
        missing = [lab for lab, ids in self._ids.items() if not ids]
        if missing:
            raise MechmodError(f"no token of the tokenizer begins the answer label(s) {missing} unambiguously; "
                               "use other labels or another tokenizer")
        self.vocab_owner = {t: lab for lab, ids in self._ids.items() for t in ids}

    def __repr__(self) -> str:
        return f"LabelSet({', '.join(f'{k}:{len(v)}' for k, v in self._ids.items())})"

    def token_ids(self, label: str) -> list[int]:
        """Every token id that counts as ``label``."""
        if label not in self._ids:
            raise MechmodError(f"{label!r} is not one of the labels {self.labels}")
        return list(self._ids[label])

    def _index(self, vocab: int) -> torch.Tensor:
        """[vocab] long: label index of each token, -1 for none."""
        owner = torch.full((vocab,), -1, dtype=torch.long)
        for i, lab in enumerate(self.labels):
            ids = torch.tensor([t for t in self._ids[lab] if t < vocab], dtype=torch.long)
            owner[ids] = i
        return owner

    def label_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] logits -> [..., n_labels] float32 probabilities (softmax
        over the full vocabulary, summed over each label's variants)."""
        p = torch.softmax(logits.float(), dim=-1)
        return torch.stack([p[..., self._ids[lab]].sum(-1) for lab in self.labels], dim=-1)

    def top1_labels(self, logits: torch.Tensor) -> np.ndarray:
        """[..., V] logits -> object array [...] of the top-1 token's label or 'other'."""
        return self.labels_of(logits.argmax(dim=-1))

    def labels_of(self, token_ids: torch.Tensor) -> np.ndarray:
        """Token ids [...] -> object array [...] of their labels or 'other'."""
        ids = token_ids.cpu()
        owner = self._index(max(int(ids.max()) + 1, 1) if ids.numel() else 1)[ids]
        names = np.array(self.labels + [OTHER], dtype=object)
        return names[owner.numpy()]  # -1 indexes OTHER

    def predict(self, logits: torch.Tensor) -> list[str]:
        """[B, V] logits -> one label (or 'other') per row."""
        return list(self.top1_labels(logits))
