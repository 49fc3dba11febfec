"""The HTTP API for web apps (SPEC 9): ``grsai-pipeline api serve``.

``models`` holds the JSON shapes (shared with the CLI's ``--json``), ``problems`` the one table
from errors to RFC 9457 problem details, ``app`` the routes. Nothing here decides anything the
store does not: the routes call the same functions as the commands.
"""
