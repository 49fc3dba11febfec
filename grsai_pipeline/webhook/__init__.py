"""The callback receiver of SPEC 5 (an adapter, like ``cli`` and ``defs``): HTTP in, the
core's ``engine.callbacks.apply_callback`` out."""
