"""gradscope: a reproducible workflow and library for studying how neural networks train.

Opposing signals (Rosenfeld & Risteski 2023), curvature and the edge of stability
(Cohen et al. 2021), and delayed generalization (grokking; Power et al. 2022).
"""

__version__ = "0.1.0"
