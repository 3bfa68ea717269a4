"""Telemetry storage: aggregate window reports, rollups, drift results and alerts."""
