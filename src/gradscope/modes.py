"""Train or eval mode: per-example quantities and curvature are defined in eval mode.

BatchNorm in training mode normalizes with the batch's own statistics, so one example's
gradient depends on the others in its batch (no per-example gradient exists), and every
forward overwrites the running statistics; Dropout in training mode makes the loss random.
Every measure in gradscope therefore runs the model in eval mode: BatchNorm on its running
statistics, no dropout. `eval_mode` is the one gate every library entry point goes through:
a model left in training mode with such layers is an error that names them, unless the
caller asks for `eval=True`, which switches to eval mode for the call and restores every
module's flag afterwards. Buffers are never written in eval mode.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

# Layers whose training-mode forward couples examples, writes buffers, or draws random numbers.
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.modules.dropout._DropoutNd,
                  nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.RNNBase)


def training_mode_layers(model: nn.Module) -> list[str]:
    """Names of the modules in training mode whose output would differ in eval mode."""
    out = []
    for name, m in model.named_modules():
        if not m.training or not isinstance(m, MODE_DEPENDENT):
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0:
            continue
        if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.RNNBase)):
            if not getattr(m, "dropout", 0):
                continue  # dropout 0: the same in both modes (their Dropout children are listed on their own)
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
            continue  # normalizes each example by itself in both modes
        out.append(name or type(m).__name__)
    return out


@contextmanager
def eval_mode(model: nn.Module, eval: bool = False, *, what: str = "this measure"):
    """Run the body with `model` in eval mode.

    eval=True: switch every module to eval mode for the body and restore each one's flag after.
    eval=False: the model must already behave as in eval mode; a BatchNorm or Dropout in
    training mode raises ValueError naming it (never wrong numbers or changed buffers).
    """
    if not eval:
        bad = training_mode_layers(model)
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(f"{what} is defined in eval mode, but the model has layers in training mode "
                             f"({shown}): BatchNorm would use batch statistics and overwrite its running "
                             "statistics, Dropout would make the loss random. Call model.eval() first, or pass eval=True.")
        yield model
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
