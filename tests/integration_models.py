"""Tiny models that tests/integrations/test_integrations.py trains with the Lightning and Hugging Face trainers.

A recording names its model factory by import path, "tests.integration_models:<factory>", which
imports from the repository root (gradscope.factories puts the working directory on sys.path),
so `gradscope.checkpoints.load` and the workflow rebuild these models from the checkpoints.
Each factory is called as factory(input_shape=..., n_classes=..., **kwargs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gradscope.integrations import _common

_common.torchvision_first()  # before Lightning, which imports it (through torchmetrics)
try:
    import lightning.pytorch as pl
except ImportError:  # the Hugging Face model needs no Lightning
    pl = None


def _body(input_shape, n_classes: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, n_classes))


class TinyClassifier(nn.Module):
    """An MLP that follows the Hugging Face convention: forward(x) gives logits (what the recorder
    evaluates); forward(x, labels) gives {"loss", "logits"} (what the Trainer trains on)."""

    def __init__(self, input_shape, n_classes: int, width: int = 32):
        super().__init__()
        self.body = _body(input_shape, n_classes, width)

    def forward(self, x, labels=None):
        logits = self.body(x)
        if labels is None:
            return logits
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def tiny_classifier(input_shape, n_classes, width: int = 32) -> TinyClassifier:
    return TinyClassifier(input_shape, n_classes, width)


def _decay(optimizer) -> dict:
    """An lr that changes every optimizer step (Lightning steps it after each), so that a recording
    that reads the lr at the wrong moment shows it."""
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (1 + 0.05 * t)), "interval": "step"}


if pl is not None:

    class LitClassifier(pl.LightningModule):
        """A LightningModule that is itself the recorded model: forward(x) gives logits."""

        def __init__(self, input_shape, n_classes: int, width: int = 32, lr: float = 0.05):
            super().__init__()
            self.body = _body(input_shape, n_classes, width)
            self.lr = lr

        def forward(self, x):
            return self.body(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
            return {"optimizer": optimizer, "lr_scheduler": _decay(optimizer)}

    class LitWrapper(pl.LightningModule):
        """A LightningModule holding the recorded model as its attribute `net` (model_attr="net")."""

        def __init__(self, net: nn.Module, lr: float = 0.01):
            super().__init__()
            self.net = net
            self.lr = lr

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            return {"optimizer": optimizer, "lr_scheduler": _decay(optimizer)}


def lit_classifier(input_shape, n_classes, width: int = 32):
    if pl is None:
        raise ImportError("lit_classifier needs Lightning: pip install 'gradscope[lightning]'")
    return LitClassifier(input_shape, n_classes, width)
