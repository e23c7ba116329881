"""`transformer`: a small pre-norm encoder over patches of a row (or over token ids), and the
DistilBERT-style layer-skip initialisation of a student from a teacher member.

    model = build_model("transformer", (40,), 10, {"layers": 4, "width": 64, "patch": 4})
    h = model.forward_features(x)          # (B, width) the pooled hidden vector
    init_from(student, teacher, [0, 2])    # copy embeddings, blocks 0 and 2, norm and head

A row of F features is cut into ceil(F / patch) patches of `patch` consecutive values (the last
one zero-padded), each mapped to `width` by one linear layer; with `vocab > 0` the F values are
token ids instead and index an embedding table (kd/datasets.py stores them as the row's
features). A learned position embedding is added, `layers` pre-norm encoder blocks
(torch's nn.TransformerEncoderLayer, norm_first) run, and the tokens are pooled (a class token,
or their mean) into the hidden vector that a final LayerNorm and a linear head turn into logits.
`align > 0` adds a linear map of the hidden vector to that width, used only by the student's
cosine term when the teacher's hidden width differs (FitNets); inference never runs it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from kd.errors import ConfigError, DataError
from kd.models.registry import dropout_knob, int_knob, register

POOLS = ("cls", "mean")
# what init_from copies besides the listed blocks: the embeddings, the final norm and the head
SHARED = ("embed", "pos", "cls", "norm", "head")
# the knobs a teacher and its student must share for those tensors to fit
INIT_KNOBS = ("width", "heads", "mlp_ratio", "patch", "pool", "vocab")


@register("transformer")
class Transformer(nn.Module):
    """Pre-norm transformer encoder classifier; see the module docstring."""

    probe_shape = (16,)
    training_only = ("align",)  # the cosine term's map: never in forward, never deployed

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, layers: int = 4,
                 width: int = 64, heads: int = 4, mlp_ratio: int = 2, dropout: float = 0.0,
                 patch: int = 4, pool: str = "cls", vocab: int = 0, align: int = 0):
        super().__init__()
        arch = "transformer"
        layers = int_knob(arch, "layers", layers, 1)
        width = int_knob(arch, "width", width, 1)
        heads = int_knob(arch, "heads", heads, 1)
        mlp_ratio = int_knob(arch, "mlp_ratio", mlp_ratio, 1)
        dropout = dropout_knob(arch, dropout)
        patch = int_knob(arch, "patch", patch, 1)
        self.vocab = int_knob(arch, "vocab", vocab, 0)
        align = int_knob(arch, "align", align, 0)
        if width % heads:
            raise ConfigError(f"{arch}: knob width={width} must be a multiple of heads={heads}")
        if pool not in POOLS:
            raise ConfigError(f"{arch}: knob pool={pool!r} must be one of {POOLS}")
        self.input_shape, self.pool, self.width = tuple(input_shape), pool, width
        self.n_features = math.prod(input_shape)
        if self.vocab:  # one token per feature: the row is a sequence of ids
            self.patch, n_tokens = 1, self.n_features
            self.embed: nn.Module = nn.Embedding(self.vocab, width)
        else:
            self.patch, n_tokens = patch, -(-self.n_features // patch)
            self.embed = nn.Linear(patch, width)
        self.n_tokens = n_tokens
        n_pos = n_tokens + (pool == "cls")
        self.pos = nn.Parameter(torch.randn(1, n_pos, width) * 0.02)  # (1, T, D)
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if pool == "cls" else None  # (1, 1, D)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, width * mlp_ratio, dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)
        self.align = nn.Linear(width, align) if align else None

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # (B, *shape) or (B, F) -> (B, T, D)
        b = x.shape[0]
        x = x.reshape(b, self.n_features)  # (B, F) rows arrive flat, as stored
        if self.vocab:
            ids = x.long()  # (B, F) the ids were stored as exact float32 integers
            # nn.Embedding's own error is a multi-line IndexError naming no row
            bad = (ids < 0) | (ids >= self.vocab) | (x != ids.to(x.dtype))  # (B, F)
            # a data-dependent branch: skipped while the ONNX exporter traces the graph
            if not torch.jit.is_tracing() and bool(bad.any()):
                r, c = (int(i) for i in torch.nonzero(bad)[0])
                raise DataError(f"transformer: token id {x[r, c].item()!r} at row {r}, position "
                                f"{c} is not an integer in [0, {self.vocab}) (knob vocab)")
            return self.embed(ids)  # (B, T, D)
        pad = self.n_tokens * self.patch - self.n_features
        if pad:
            x = nn.functional.pad(x, (0, pad))  # (B, T * P)
        return self.embed(x.view(b, self.n_tokens, self.patch))  # (B, T, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, D)
        """The pooled hidden vector: what export stores as `hidden.<member>` and the student's
        cosine term aligns."""
        h = self.tokens(x)  # (B, T, D)
        if self.pool == "cls":
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + T, D)
        h = self.drop(h + self.pos)
        for block in self.blocks:
            h = block(h)  # (B, T', D)
        h = h[:, 0] if self.pool == "cls" else h.mean(dim=1)  # (B, D)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, n_classes)
        return self.forward_with_hidden(x)[0]

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, n_classes), pooled hidden vector (B, D)) from one pass."""
        h = self.forward_features(x)  # (B, D)
        return self.head(self.drop(h)), h


def init_problem(student_knobs: dict[str, Any], teacher_arch: str,
                 teacher_knobs: dict[str, Any], layers: list[int]) -> str | None:
    """Why a student with `student_knobs` (full, defaults filled in) cannot be initialised from
    a teacher member (`teacher_arch`, full knobs) with `layers`, or None when it can."""
    if teacher_arch != "transformer":
        return f"the member is a {teacher_arch!r}, not a 'transformer'"
    for k in INIT_KNOBS:
        if student_knobs[k] != teacher_knobs[k]:
            return f"knob {k} is {student_knobs[k]!r} in the student, {teacher_knobs[k]!r} in " \
                   "the member"
    if len(layers) != student_knobs["layers"]:
        return f"{len(layers)} layers listed for a student of layers={student_knobs['layers']}"
    if bad := [i for i in layers if not 0 <= i < teacher_knobs["layers"]]:
        return f"layer {bad[0]} is not one of the member's {teacher_knobs['layers']} layers " \
               f"(0..{teacher_knobs['layers'] - 1})"
    return None


@torch.no_grad()
def init_from(student: Transformer, teacher: Transformer, layers: list[int]) -> None:
    """Copy the teacher's embeddings, its blocks `layers` (in order: student block j gets
    teacher block layers[j]), its final norm and its head into the student, exactly (HF's
    DistilBERT extraction copies BERT's [0, 2, 4, 7, 9, 11] the same way). The tensors must fit
    (init_problem); the student's `align` map, if any, keeps its own init."""
    assert len(layers) == len(student.blocks), "init_problem() was not checked"
    for name in SHARED:
        part, src = getattr(student, name), getattr(teacher, name)
        if part is None:  # no class token with pool: mean
            continue
        if isinstance(part, nn.Parameter):
            part.copy_(src)
        else:
            part.load_state_dict(src.state_dict())
    for j, i in enumerate(layers):
        student.blocks[j].load_state_dict(teacher.blocks[i].state_dict())
