"""``edgefleet``: the command-line client of EdgeFleet's management API (for people and CI)."""

__version__ = "0.1.0"
