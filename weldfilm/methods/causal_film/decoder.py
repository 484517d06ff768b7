"""L3 of Causal-FiLM: the anti-generalisation decoder Z_proc -> Z_pred (spec section 5).

The authors' config names ``decoder_num_layers=2`` and ``decoder_dropout=0.2``, but their model builds
``AntiGenDecoder(d_model=d)`` with one hidden block and the hard-coded dropout 0.1. That effective form is
the default here (``causal_film.decoder_num_layers: 1``, ``causal_film.decoder_dropout: 0.1``); the
intended one is reached by setting the two keys (2 / 0.2).

``num_layers`` counts hidden blocks ``Linear(d -> d) -> LayerNorm -> SiLU -> Dropout(p)``; one output
``Linear(d -> d)`` follows. With one block the module (and its state-dict keys) is the authors' decoder.
"""

from __future__ import annotations

from torch import nn


class AntiGenDecoder(nn.Sequential):
    """``num_layers`` x [Linear(d -> d) -> LayerNorm -> SiLU -> Dropout(p)] -> Linear(d -> d)."""

    def __init__(self, d_model: int, dropout: float = 0.1, num_layers: int = 1):
        if num_layers < 1:
            raise ValueError(f"the decoder needs at least one hidden block, got num_layers={num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"decoder dropout must be in [0, 1), got {dropout}")
        blocks = []
        for _ in range(num_layers):
            blocks += [nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.SiLU(), nn.Dropout(dropout)]
        super().__init__(*blocks, nn.Linear(d_model, d_model))
        self.num_layers, self.dropout = num_layers, dropout
