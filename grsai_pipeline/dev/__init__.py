"""For demos, tests and benchmarks only: the local Grsai-compatible simulator and the server
that runs an ASGI app in a background thread. The product never imports this package."""
