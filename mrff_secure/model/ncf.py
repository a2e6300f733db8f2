"""FedNCF's model (Perifanis & Efraimidis 2022): neural collaborative filtering, not sequential.

NeuMF for one user: a GMF branch (user vector * projected item) and an MLP
branch over [user ; item], joined by one output layer. The user vector is the
private user embedding (as in every model here: it never leaves the device);
the item embeddings (attribute concatenation, Eq. 1: KuaiSAR-R has no item id),
the projection, the MLP and the output are shared. The item sequence is not
used; each target item is scored on its own. No dropout (NCF has none).
"""

from __future__ import annotations

import torch
from torch import nn

from mrff_secure.config import ModelConfig
from mrff_secure.data.client_data import AttributeSource
from mrff_secure.model.layers import MLP, ModelOutput, UserItemModel

NCF_MLP_DIMS = (64, 32, 16)


class NCF(UserItemModel):
    def __init__(self, config: ModelConfig, data: AttributeSource) -> None:
        super().__init__(config, data)
        self.item_projection = nn.Linear(self.hidden, self.user_dim)  # GMF needs equal sizes
        self.mlp = MLP([self.user_dim + self.hidden, *NCF_MLP_DIMS], relu_last=True)
        self.output = nn.Linear(self.user_dim + NCF_MLP_DIMS[-1], 1)

    def forward(self, seq: torch.Tensor, targets: torch.Tensor, routes: torch.Tensor | None = None) -> ModelOutput:
        """Logits of `targets` ((seq,) in training, () at inference); no gate, so probs and routes are None."""
        item = self.items(targets)
        user = self.user().expand(*targets.shape, self.user_dim)
        gmf = user * self.item_projection(item)
        deep = self.mlp(torch.cat([user, item], dim=-1))
        return self.output(torch.cat([gmf, deep], dim=-1)).squeeze(-1), None, None
