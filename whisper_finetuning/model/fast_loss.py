"""The output projection and the label-smoothed NLL, a chunk of target positions at a time.

The reference (``chunk_size: 0``) projects every decoder position, takes
``log_softmax(logits.float())`` over the whole batch and hands it to SpeechBrain's ``nll_loss``;
autograd then keeps several float32 (batch, positions, vocabulary) tensors for the backward pass.
The chunked path projects only the positions that predict a real target token, ``chunk_size``
of them at a time, and computes each chunk's gradients with respect to the hidden states and the
projection weight in the forward pass (the loss is a sum over positions, so the backward pass
only scales them): at most one chunk's logits exist at any time. The token statistics the
training log and the diagnosis read (``training_log.token_statistics``) come from the same pass.
With a teacher (``Distillation``), the KL to its distribution comes from the same logits too,
its gradient added to the NLL's before the two products, so distilling multiplies by the
vocabulary as often as plain training does.
"""

from typing import NamedTuple

import torch

# Vocabulary rows per product on CPU: MKL multiplies a few hundred positions by a block of the
# [vocabulary, width] weight 13-25% faster than by the whole transposed weight (docs/speed.md).
CPU_VOCAB_BLOCK = 2048


class Distillation(NamedTuple):
    """What the loss adds for a teacher: ``weight`` times the KL of the student's distribution
    from the teacher's, both softened by ``temperature``, times its square (Hinton et al.),
    averaged over the target positions. The teacher's logits are its final decoder states
    (``teacher_hidden``, aligned with the targets) through its bias-free output projection
    (``teacher_projection``), projected a chunk of target positions at a time as the student's."""

    teacher_hidden: torch.Tensor
    teacher_projection: torch.nn.Module
    weight: float
    temperature: float


def distillation_kl(student_logits, teacher_logits, temperature):
    """``temperature ** 2`` times KL(teacher || student) at each row (a position's logits), both
    distributions softened by ``temperature``."""
    return _softened_kl(student_logits, teacher_logits, temperature)[0]


def _softened_kl(student_logits, teacher_logits, temperature):
    """``distillation_kl``'s rows, and the softened student log-probabilities and teacher
    probabilities they came from."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    teacher_probs = teacher.exp()
    kl = temperature**2 * (teacher_probs * (teacher - student)).sum(dim=-1)
    return kl, student, teacher_probs


def nll_loss(
    projection,
    hidden,
    targets,
    length,
    label_smoothing=0.0,
    chunk_size=256,
    statistics_rows=0,
    entropy=False,
    row_weights=None,
    distillation=None,
):
    """Label-smoothed NLL of ``targets`` and, for the first ``statistics_rows`` rows, their
    token statistics (``training_log.token_statistics``'s dict; None when 0 rows). With
    ``distillation`` (a ``Distillation``), plus its weighted KL to the teacher, averaged over the
    same tokens (not scaled by ``row_weights``).

    ``row_weights`` (batch,), if given, scale each row's tokens' terms: the loss is the
    weighted sum over tokens divided by the (unweighted) token count, so weights of 1 give the
    plain loss and a row of weight 0 only counts its tokens. The statistics stay unweighted.

    ``hidden`` (batch, time, width) are the decoder's final states aligned with ``targets``
    (batch, time); ``projection`` is the output projection (a bias-free linear layer);
    ``length`` are SpeechBrain's relative lengths. ``chunk_size`` positions are projected at a
    time; 0 projects the whole batch at once (the reference path).
    """
    n_tokens = torch.round(length * targets.shape[1]).long()
    mask = torch.arange(targets.shape[1], device=targets.device)[None] < n_tokens[:, None]
    if chunk_size == 0:
        # imported here: the chunked path (and the GPU benchmark) needs neither
        from speechbrain.nnet.losses import nll_loss as speechbrain_nll_loss

        from whisper_finetuning.training.log import token_statistics

        log_probs = torch.nn.functional.log_softmax(projection(hidden).float(), dim=-1)
        if row_weights is None:
            loss = speechbrain_nll_loss(
                log_probs, targets, length=length, label_smoothing=label_smoothing
            )
        else:  # each row's mean, back to a sum over its tokens, weighted
            per_row = speechbrain_nll_loss(
                log_probs, targets, length, label_smoothing=label_smoothing, reduction="batch"
            )
            loss = (per_row * n_tokens * row_weights).sum() / n_tokens.sum()
        if distillation is not None:
            with torch.no_grad():  # the teacher is frozen
                teacher_logits = distillation.teacher_projection(distillation.teacher_hidden[mask])
            # log-probabilities are the logits shifted per row: the same softened distribution
            kl = distillation_kl(log_probs[mask], teacher_logits, distillation.temperature)
            loss = loss + distillation.weight * kl.sum() / max(kl.numel(), 1)
        stats = None
        if statistics_rows:
            n = statistics_rows
            with torch.no_grad():
                stats = token_statistics(log_probs[:n], targets[:n], length[:n], entropy)
        return loss, stats
    if projection.bias is not None:
        raise ValueError("the chunked loss expects a bias-free output projection")
    token_weights = None
    if row_weights is not None:
        token_weights = row_weights[:, None].expand(mask.shape)[mask].float()
    if distillation is not None:
        if distillation.teacher_projection.bias is not None:
            raise ValueError("the chunked loss expects a bias-free teacher projection")
        distillation = distillation._replace(teacher_hidden=distillation.teacher_hidden[mask])
    loss, target_lp, top_lp, argmax, entropies = _ProjectedNLL.apply(
        hidden[mask],
        projection.weight,
        targets[mask],
        label_smoothing,
        chunk_size,
        entropy,
        token_weights,
        distillation,
    )
    stats = None
    if statistics_rows:
        stats = _statistics(
            n_tokens[:statistics_rows], targets[mask], target_lp, top_lp, argmax, entropies
        )
    return loss, stats


def _statistics(n_tokens, flat_targets, target_lp, top_lp, argmax, entropies):
    """``token_statistics``'s dict from per-position values in row-major order (the rows of
    ``n_tokens`` come first)."""
    counts = n_tokens.tolist()
    used = sum(counts)
    hit = argmax[:used] == flat_targets[:used]

    def per_row(values):
        return [float(part.sum()) for part in torch.split(values[:used], counts)]

    return {
        "nll": per_row(-target_lp),
        "correct": [int(part.sum()) for part in torch.split(hit, counts)],
        "tokens": counts,
        "entropy": per_row(entropies) if entropies is not None else None,
        "argmax": [part.tolist() for part in torch.split(argmax[:used], counts)],
        "confidence": top_lp[:used].exp(),
        "is_correct": hit,
    }


def logits(rows, weight):
    """``rows @ weight.T``, a block of vocabulary rows at a time on CPU. matmul, not F.linear:
    autocast casts both alike, as it does the reference's Linear."""
    if rows.device.type != "cpu":
        return torch.matmul(rows, weight.t())
    out = None
    for start in range(0, weight.shape[0], CPU_VOCAB_BLOCK):
        block = torch.matmul(rows, weight[start : start + CPU_VOCAB_BLOCK].t())
        if out is None:  # in the product's dtype (autocast's)
            out = block.new_empty(rows.shape[0], weight.shape[0])
        out[:, start : start + block.shape[1]] = block
    return out


class _ProjectedNLL(torch.autograd.Function):
    """Mean label-smoothed NLL of ``targets`` (one per row of ``hidden``; each term times its
    ``token_weights`` entry, if given) under the logits ``hidden @ weight.T``, and per-row
    target log-probability, top log-probability, argmax and (with ``entropy``) entropy, which
    carry no gradient; with ``distillation``, plus its weighted KL (its teacher's states one
    row per row of ``hidden``)."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        targets,
        label_smoothing,
        chunk_size,
        entropy,
        token_weights,
        distillation,
    ):
        count = max(hidden.shape[0], 1)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = None  # the first chunk's product, then the sum (a batch is often one chunk)
        total = hidden.new_zeros((), dtype=torch.float32)
        stats = {"target": [], "top": [], "argmax": [], "entropy": []}
        for start in range(0, hidden.shape[0], chunk_size):
            rows = hidden[start : start + chunk_size]
            row_targets = targets[start : start + chunk_size]
            chunk_logits = logits(rows, weight).float()
            log_probs = torch.log_softmax(chunk_logits, dim=-1)
            kl_grad = None
            if distillation is not None:
                teacher = logits(
                    distillation.teacher_hidden[start : start + chunk_size],
                    distillation.teacher_projection.weight,
                )
                kl, kl_grad = _distillation_term(chunk_logits, teacher, distillation)
                del teacher
                total = total + kl
            del chunk_logits
            picked = log_probs.gather(-1, row_targets[:, None])[:, 0]
            smoothed = (1 - label_smoothing) * -picked - label_smoothing * log_probs.mean(dim=-1)
            row_weights = None
            if token_weights is not None:
                row_weights = token_weights[start : start + chunk_size]
                smoothed = smoothed * row_weights
            total = total + smoothed.sum()
            top, top_index = log_probs.max(dim=-1)
            stats["target"].append(picked)
            stats["top"].append(top)
            stats["argmax"].append(top_index)
            if entropy:
                stats["entropy"].append(-(log_probs.exp() * log_probs).sum(dim=-1))
            if want_hidden or want_weight:
                # d(loss)/d(logits): the softmax minus the smoothed target distribution
                grad_logits = log_probs.exp_().sub_(label_smoothing / log_probs.shape[-1])
                grad_logits[torch.arange(len(rows)), row_targets] -= 1 - label_smoothing
                grad_logits /= count
                if row_weights is not None:
                    grad_logits *= row_weights[:, None]
                if kl_grad is not None:
                    grad_logits += kl_grad.div_(count)
                if want_hidden:
                    grad_hidden[start : start + chunk_size] = torch.matmul(grad_logits, weight)
                if want_weight:
                    product = torch.matmul(grad_logits.t(), rows).float()
                    grad_weight = product if grad_weight is None else grad_weight.add_(product)
                    del product  # else it lives on beside the next chunk's
                del grad_logits
            del log_probs, kl_grad  # before the next chunk's logits exist
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        empty = {"argmax": hidden.new_zeros(0, dtype=torch.long)}
        outputs = [
            torch.cat(values) if values else empty.get(key, hidden.new_zeros(0).float())
            for key, values in stats.items()
        ]
        if not entropy:
            outputs[-1] = None
        ctx.mark_non_differentiable(*(o for o in outputs if o is not None))
        return (total / count, *outputs)

    @staticmethod
    def backward(ctx, grad_loss, *unused_statistics_grads):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            if grad_loss.item() != 1:  # the CE alone (the usual case) takes the sum as it is
                grad_weight = grad_weight * grad_loss
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None


def _distillation_term(student_logits, teacher_logits, distillation):
    """A chunk's weighted sum of ``distillation_kl`` and its gradient with respect to the
    student's logits: ``weight x T x (softmax(student / T) - softmax(teacher / T))``."""
    weight, temperature = distillation.weight, distillation.temperature
    kl, student, teacher_probs = _softened_kl(student_logits, teacher_logits, temperature)
    return weight * kl.sum(), student.exp_().sub_(teacher_probs).mul_(weight * temperature)
