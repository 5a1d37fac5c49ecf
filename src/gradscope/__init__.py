"""gradscope: a reproducible workflow and library for studying how neural networks train.

Opposing signals (Rosenfeld & Risteski 2023), curvature and the edge of stability
(Cohen et al. 2021), and delayed generalization (grokking; Power et al. 2022).
"""

__version__ = "0.1.0"

# The notebook entry points, imported when first used (so `import gradscope` stays light).
_LAZY = {"open_run": "gradscope.results", "open_results": "gradscope.results", "analyze": "gradscope.analysis",
         "Recorder": "gradscope.recorder"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")
