"""Token classification head: a tag per subword, cross-entropy over the labelled subwords, and
entity-level metrics over whole sentences stitched back from their windows."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torchmetrics import Metric, MetricCollection

from sft.labels import key_map
from sft.models.heads import Head, per_label_names, per_label_tensor
from sft.tagging import entity_scores, split_tag

IGNORE = -100


class EntityMetric(Metric):
    """seqeval-style entity precision/recall/F1 (overall and per type) and word accuracy.

    Updated with one entry per word (sentence id, word position, predicted and gold tag id);
    each word arrives once, from the window that owns it, so windows may fall in different
    batches or processes and the sentences are still rebuilt whole."""

    full_state_update = False

    def __init__(self, tag_names: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.tag_names = list(tag_names)
        self.types = sorted({split_tag(t)[1] for t in self.tag_names} - {None})
        for name in ("sentence", "word", "predicted", "gold"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, sentence: torch.Tensor, word: torch.Tensor, predicted: torch.Tensor, gold: torch.Tensor) -> None:
        self.sentence.append(sentence)
        self.word.append(word)
        self.predicted.append(predicted)
        self.gold.append(gold)

    def compute(self) -> dict[str, torch.Tensor]:
        def flat(state):
            return (torch.cat(state) if isinstance(state, list) else state).tolist() if len(state) else []

        # keyed by word, so a sentence that a distributed sampler repeats to even out ranks counts once
        sentences: dict[int, dict[int, tuple[int, int]]] = {}
        for s, w, p, g in zip(flat(self.sentence), flat(self.word), flat(self.predicted), flat(self.gold)):
            sentences.setdefault(s, {})[w] = (p, g)
        gold, predicted = [], []
        for s in sorted(sentences):
            words = [sentences[s][w] for w in sorted(sentences[s])]
            predicted.append([self.tag_names[p] for p, _ in words])
            gold.append([self.tag_names[g] for _, g in words])
        scores = entity_scores(gold, predicted, self.types)
        return {name: torch.tensor(value) for name, value in scores.items()}


class TokenClassificationHead(Head):
    """Dropout and a linear layer to tag logits on every subword; cross-entropy on labelled ones."""

    predict_keeps = ("word_index", "sentence_index")  # batch entries a prediction file needs

    def __init__(self, hidden_size: int, label_names: Sequence[str], dropout: float = 0.1,
                 label_smoothing: float = 0.0, class_weights: Any = None):
        super().__init__()
        self.label_names = [str(n) for n in label_names]
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, len(self.label_names))
        self.loss_fn = nn.CrossEntropyLoss(weight=per_label_tensor(class_weights, self.label_names, "model.class_weights"),
                                           ignore_index=IGNORE, label_smoothing=label_smoothing)

    def forward(self, features: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.loss_fn(logits.float().flatten(0, 1), batch["labels"].flatten())

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        return MetricCollection({"entity": EntityMetric(self.label_names)}, prefix=prefix)

    def metric_names(self, prefix: str, final: bool = False) -> set[str]:
        names = {f"{prefix}{name}" for name in ("entity_precision", "entity_recall", "entity_f1", "token_acc")}
        return names | per_label_names(prefix, "entity_f1_", self.entity_types)

    @property
    def entity_types(self) -> list[str]:
        return sorted({split_tag(t)[1] for t in self.label_names} - {None})  # as EntityMetric orders them

    def label_keys(self) -> dict[str, str]:
        return key_map(self.entity_types)

    def loss_weight(self, logits: torch.Tensor, batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())  # the loss is a mean over labelled subwords

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, batch: dict) -> None:
        owned = batch["word_index"] >= 0
        sentence = batch["sentence_index"].unsqueeze(1).expand_as(owned)
        metrics.update(sentence[owned], batch["word_index"][owned], logits.detach().argmax(-1)[owned],
                       batch["word_labels"][owned])

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flat, keys = {}, self.label_keys()
        for name, value in values.items():
            base, per_type, kind = name.partition("entity_f1_")
            flat[base + per_type + keys.get(kind, kind) if per_type else name] = value
        return flat

    def predict(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction": logits.argmax(-1)}
