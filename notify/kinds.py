"""The event kinds one can subscribe to, and how each reads in a Slack message or an e-mail (pure)."""

from typing import Any

KINDS: dict[str, str] = {
    "alert.opened": "an alert opened (drift or a regression found by a gate)",
    "alert.resolved": "an alert was resolved (by an operator or because drift went away)",
    "campaign.advance": "a campaign went to its next wave",
    "campaign.pause": "a campaign was paused (by a gate or a person)",
    "campaign.rollback": "a campaign was rolled back (by a gate or a person)",
    "campaign.complete": "a campaign completed: the version is the cohort's release",
    "validation.finished": "an uploaded version was staged or rejected",
    "fleet.offline": "the share of offline devices rose above the subscription's threshold",
}
CAMPAIGN_KINDS = ("advance", "pause", "rollback", "complete")
TEST = "test"


def title(kind: str, p: dict[str, Any]) -> str:
    if kind.startswith("campaign."):
        who = "" if p.get("actor") in (None, "system") else f" by {p.get('actor')}"
        return f"Campaign “{p.get('name')}” ({p.get('model')}:{p.get('version')}): {kind.split('.', 1)[1]}{who}"
    if kind == "alert.opened":
        return f"Alert opened: {p.get('alert_kind')} on {p.get('model')}:{p.get('version')} ({p.get('cohort')})"
    if kind == "alert.resolved":
        return f"Alert resolved: {p.get('alert_kind')} on {p.get('model')}:{p.get('version')} ({p.get('cohort')})"
    if kind == "validation.finished":
        return f"{p.get('model')}:{p.get('version')} {p.get('status')}"
    if kind == "fleet.offline":
        return f"{p.get('share', 0):.0%} of the fleet is offline (threshold {p.get('threshold', 0):.0%})"
    if kind == TEST:
        return "Test notification from EdgeFleet"
    return kind


def text(kind: str, p: dict[str, Any]) -> str:
    """A few lines for a person: the title, the reason or message, and where to look."""
    lines = [title(kind, p)]
    for key in ("reason", "message", "error"):
        if p.get(key):
            lines.append(str(p[key]))
    if p.get("failed_gates"):
        lines.append("failed gates: " + ", ".join(p["failed_gates"]))
    if p.get("url"):
        lines.append(str(p["url"]))
    return "\n".join(lines)
