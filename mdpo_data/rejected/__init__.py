"""Rejected-image strategies (m_l): the registry (`registry`) and one module per strategy.

Importing the package registers every built-in strategy in `registry.STRATEGIES`.
"""

from mdpo_data.rejected import crop, moco, noise, pipeline, registry, swap  # noqa: F401  (registration)
