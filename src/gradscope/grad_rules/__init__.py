"""Per-layer rules of the per-example engine (one file per layer type), and their registry.

See gradscope.grad_rules.base for the contract. Importing this package registers every rule.
"""

from gradscope.grad_rules import attention, conv, embedding, linear, norm  # noqa: F401  (registration)
from gradscope.grad_rules.base import (  # noqa: F401
    EMBEDDING_GRAM_MAX_T,
    EXPLICIT_MAX_ELEMENTS,
    RULES,
    EmbeddingTokens,
    Explicit,
    Stat,
    Tokens,
    combine,
    register,
)
