"""The engine: one event loop that submits and polls for one batch or every open batch, and
the application of a verified callback. The only part of the core that talks to both the
Grsai API and the database."""
