"""grsai-pipeline: batch AI video generation through the Grsai API, orchestrated by Dagster.

Layers, imports pointing down only: ``domain`` (pure rules) <- ``grsai`` (the API) and ``store``
(the application database) <- ``steps`` (one function per pipeline step) <- ``defs`` (Dagster)
and ``cli``.
"""

__version__ = "0.1.0"
