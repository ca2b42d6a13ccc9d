"""T5 predictions with a :class:`~pha_lightning.model.PHAModel`'s adapters (``seq2seq_eval``).

Greedy generation, parsed by the task (the paper; a text that does not parse is ``INVALID``), or
rank classification, which scores the task's candidate targets and never yields an invalid value.
Both run the backbone through :meth:`PHAModel.run_backbone`, so each example gets its task's adapters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pha_lightning.data.tasks import INVALID
from pha_lightning.model.sharding import is_sharded


def predicted_values(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Per-example values (class index or regression value) the way ``model.config.seq2seq_eval`` says."""
    return rank_values(model, batch) if model.config.seq2seq_eval == "rank" else generated_values(model, batch)


def generate_texts(model: nn.Module, batch: dict[str, Tensor]) -> list[str]:
    """Greedy generation with each example's task adapters."""
    tokens, _ = model.run_backbone(
        batch,
        lambda: model.backbone.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=model.config.generation_max_length,
            num_beams=1,
            do_sample=False,
            synced_gpus=is_sharded(model),  # ranks finish at different lengths; each step gathers weights
        ),
    )
    return [text.strip() for text in model.tokenizer.batch_decode(tokens, skip_special_tokens=True)]


def generated_values(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """:func:`generate_texts` parsed by each example's task; ``INVALID`` where a text does not parse."""
    texts = generate_texts(model, batch)
    tasks = model.task_objects
    values = [tasks[t].parse_generation(text) for t, text in zip(batch["task_ids"].tolist(), texts)]
    return torch.tensor([INVALID if v is None else v for v in values], dtype=torch.float32, device=model.device)


def rank_values(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Rank classification: score every candidate target of the example's task by its summed
    token log-likelihood and take the best; no generation, never invalid."""
    values = torch.empty(len(batch["task_ids"]), device=model.device)
    for task in torch.unique(batch["task_ids"]).tolist():
        rows = (batch["task_ids"] == task).nonzero(as_tuple=True)[0]
        sub = {k: v.index_select(0, rows) for k, v in batch.items() if isinstance(v, Tensor) and len(v) == len(values)}
        candidates = model.task_objects[task].rank_candidates()
        scores, _ = model.run_backbone(
            sub, lambda sub=sub, candidates=candidates: _candidate_scores(model, sub, candidates)
        )
        best = scores.argmax(-1).tolist()
        parsed = [model.task_objects[task].parse_generation(candidates[i]) for i in best]
        values[rows] = torch.tensor(parsed, dtype=torch.float32, device=model.device)
    return values


def _candidate_scores(model: nn.Module, batch: dict[str, Tensor], candidates: tuple[str, ...]) -> Tensor:
    """``(B, C)`` summed log-likelihoods; the encoder runs once, the decoder once per candidate."""
    backbone, tokenizer = model.backbone, model.tokenizer
    encoded = backbone.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    targets = tokenizer(text_target=list(candidates), padding=True, return_tensors="pt")["input_ids"]
    targets = targets.masked_fill(targets == tokenizer.pad_token_id, -100).to(model.device)
    scores = []
    for target in targets:
        labels = target.expand(len(batch["input_ids"]), -1)
        logits = backbone(
            encoder_outputs=encoded,
            attention_mask=batch["attention_mask"],
            decoder_input_ids=backbone._shift_right(labels),
        ).logits
        log_probs = logits.float().log_softmax(-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        scores.append(log_probs.masked_fill(labels == -100, 0.0).sum(-1))
    return torch.stack(scores, dim=1)
