"""The campaign layer of manifest resolution: what a campaign tells the devices it reaches.

``manifest_hook`` runs in ``rollout.manifest.DESIRED_HOOKS`` on top of releases; it loads campaigns once
per generation and makes no query per poll (docs/rollout.md, "Manifest layer").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rollout import placement
from rollout import windows as window_rules
from rollout.models import Campaign, Release
from rollout.targeting import requirements_for

S = Campaign.State


@dataclass(frozen=True)
class LayerEntry:
    """One campaign as the manifest resolver sees it, loaded once per generation."""

    campaign_id: int
    model: str
    state: str
    version_id: int
    previous_version_id: int | None
    cohort_id: int | None
    covered: int
    requirements: placement.Requirements
    windows: tuple[dict[str, Any], ...] = ()
    window_tz: str = window_rules.DEVICE_TZ
    conditions: tuple[tuple[str, Any], ...] = ()
    bucketing: str = placement.KEYED

    def install_rules(self, labels: dict[str, Any]) -> dict[str, Any] | None:
        """The manifest entry's ``install`` object for a device with these labels (None: install at once)."""
        if not self.windows and not self.conditions:
            return None
        rules: dict[str, Any] = {}
        if self.windows:
            rules["windows"] = [dict(w) for w in self.windows]
            rules["tz"] = window_rules.device_zone(labels, self.window_tz)
        if self.conditions:
            rules["conditions"] = dict(self.conditions)
        return rules


def load_layer() -> list[LayerEntry]:
    """Campaigns that decide something for devices now, oldest first (the first one for a model wins).

    - running or paused: devices in the covered buckets (and compatible) desire the new version;
    - rolled back, when nothing newer was released or campaigned for the model since: those devices
      desire the previous version again;
    - completed, while its release is in force: incompatible devices of the cohort stay on the
      previous version instead of following the release.
    """
    from django.db.models import Max

    latest_release = dict(Release.objects.values_list("model_id").annotate(at=Max("created_at")))
    latest_start = dict(
        Campaign.objects.exclude(started_at=None).values_list("model_id").annotate(at=Max("started_at"))
    )
    rows = (
        Campaign.objects.filter(state__in=[S.RUNNING, S.PAUSED, S.ROLLED_BACK, S.COMPLETED])
        .select_related("model", "version__artifact")
        .order_by("started_at", "id")
    )
    entries: list[LayerEntry] = []
    for c in rows:
        if c.state == S.ROLLED_BACK:
            newer_release = latest_release.get(c.model_id)
            if (newer_release and c.finished_at and newer_release > c.finished_at) or (
                latest_start.get(c.model_id) and c.started_at and latest_start[c.model_id] > c.started_at
            ):
                continue
        if c.state == S.COMPLETED and c.previous_version_id is None:
            continue
        entries.append(
            LayerEntry(
                campaign_id=c.pk,
                model=c.model.name,
                state=c.state,
                version_id=c.version_id,
                previous_version_id=c.previous_version_id,
                cohort_id=c.cohort_id,
                covered=placement.coverage(c.waves, c.wave_index),
                requirements=requirements_for(c.version, c.requirements),
                bucketing=c.bucketing,
                **_install_fields(c),
            )
        )
    return entries


def _install_fields(c: Campaign) -> dict[str, Any]:
    """The campaign's windows and conditions as stored; a row changed into nonsense installs nowhere."""
    try:
        windows = tuple(w.as_dict() for w in window_rules.parse_windows(c.windows or []))
        window_rules.validate_tz_mode(c.window_tz or window_rules.DEVICE_TZ)
        conditions = tuple(sorted(window_rules.validate_conditions(c.conditions or {}).items()))
    except window_rules.WindowError:
        # fail closed: a window the agent cannot read keeps the new version out (agent/conditions.py)
        return {"windows": ({"days": [], "start": "", "end": ""},), "window_tz": "UTC", "conditions": ()}
    return {"windows": windows, "window_tz": c.window_tz or window_rules.DEVICE_TZ, "conditions": conditions}


def manifest_hook(snapshot: Any, desired: list[Any], state: Any) -> list[Any]:
    """``rollout.manifest`` hook: apply campaigns on top of releases, with no query per poll."""
    from rollout.manifest import Desired, per_generation

    layer: list[LayerEntry] = per_generation(state, "campaigns", load_layer)
    if not layer:
        return desired
    by_model = {d.model: d for d in desired}
    decided: set[str] = set()
    hardware = snapshot.hardware or {}
    for e in layer:
        if e.model in decided or not state.cohort_matches(e.cohort_id, snapshot.labels or {}):
            continue
        compatible = placement.incompatibility(hardware, e.requirements) is None
        new, previous = state.version(e.version_id), state.version(e.previous_version_id or -1)
        if e.state == S.COMPLETED:
            current = by_model.get(e.model)
            if not compatible and current is not None and current.version.id == e.version_id and previous:
                by_model[e.model] = Desired(e.model, previous, None, None)
                decided.add(e.model)
            elif current is not None and current.version.id == e.version_id and current.install is None:
                # stragglers of a completed campaign still install only in its windows and conditions
                rules = e.install_rules(snapshot.labels or {})
                if rules is not None:
                    by_model[e.model] = replace(current, install=rules)
            continue
        if not compatible or placement.bucket_for(snapshot.id, e.campaign_id, e.bucketing) >= e.covered:
            continue
        decided.add(e.model)
        if e.state in (S.RUNNING, S.PAUSED) and new is not None:
            by_model[e.model] = Desired(e.model, new, previous, e.campaign_id, e.install_rules(snapshot.labels or {}))
        elif e.state == S.ROLLED_BACK:
            if previous is not None:
                by_model[e.model] = Desired(e.model, previous, None, e.campaign_id)
            else:
                by_model.pop(e.model, None)
    return list(by_model.values())


def register_manifest_hook() -> None:
    """Called from ``RolloutConfig.ready``; quiet while the resolver has not landed."""
    try:
        from rollout.manifest import DESIRED_HOOKS
    except ImportError:
        return
    if manifest_hook not in DESIRED_HOOKS:
        DESIRED_HOOKS.append(manifest_hook)
