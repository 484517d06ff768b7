"""L3 of Causal-FiLM: the anti-generalisation decoder Z_proc -> Z_pred (spec section 5).

The authors' config names ``decoder_num_layers=2`` and ``decoder_dropout=0.2``, but the model builds this
decoder with its hard-coded dropout 0.1 and one hidden layer; that effective form is what is here.
"""

from __future__ import annotations

from torch import nn


class AntiGenDecoder(nn.Sequential):
    """Linear(d -> d) -> LayerNorm -> SiLU -> Dropout(0.1) -> Linear(d -> d)."""

    def __init__(self, d_model: int, dropout: float = 0.1):
        super().__init__(nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(d_model, d_model))
