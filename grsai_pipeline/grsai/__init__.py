"""The Grsai API and nothing else: wire format, async client, local simulator."""
