"""grsai-pipeline: batch AI video generation through the Grsai API, orchestrated by Dagster.

The core (``errors``, ``config``, ``domain``, ``grsai``, ``store``, ``engine``) knows nothing
of Dagster, the command line or HTTP serving; the adapters (``defs`` with ``definitions``,
``cli``, ``webhook``) call it; ``dev`` holds the simulator for demos and tests. See
ARCHITECTURE.md; ``make lint`` checks the layers.
"""

__version__ = "0.1.0"
