"""Secure aggregation (Bonawitz et al. 2017 over SecAgg+'s sparse graph, Bell et al. 2020), pure.

One package for both sides: the agent imports the client, the server imports the same modules
(``server``, ``config``, ``messages``), so the derivations can never drift apart. No Django, no I/O.
"""
