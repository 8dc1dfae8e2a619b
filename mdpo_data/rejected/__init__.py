"""Rejected-image strategies (m_l): the registry (`registry`) and one module per strategy.

Importing the package registers every built-in strategy in `registry.STRATEGIES`.
"""

# Registration order is the order --help and errors list them.
from mdpo_data.rejected import registry  # noqa: F401, I001
from mdpo_data.rejected import crop, swap, moco, noise, pipeline  # noqa: F401, I001  (registration)
