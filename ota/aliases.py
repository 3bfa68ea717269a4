"""Aliases on versions (``fraud@production``): set, move, remove (audited), and resolve a version reference.

One version per alias and model (a database constraint); only staged versions carry an alias, and
archiving a version takes its aliases off (``release_aliases``). Everywhere a version is named
(releases, campaigns, the CLI, the API) a reference is resolved by :func:`resolve`:

- ``@production``: the alias, always;
- ``v3``: the version labelled ``v3``; when no version has that label, the alias of that name.

So an alias never shadows a label, and ``@`` makes the alias explicit when a label could match.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest

from accounts.audit import record
from ota.models import Alias, Model, ModelVersion

ALIAS_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
SUGGESTED = ("production", "staging", "candidate")
ALIAS_HELP = "An alias is 1-32 lower-case letters, digits or '-', starting with a letter, e.g. 'production'."
REF_RE = re.compile(r"^@?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AliasError(Exception):
    """A refused alias change or an unknown reference, with a field and an HTTP status for the API."""

    def __init__(self, code: str, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.status = code, message, field, status


def check_name(name: str) -> str:
    if not ALIAS_RE.match(name or ""):
        raise AliasError("bad_alias", ALIAS_HELP, "alias")
    return name


def resolve(model: Model | str, ref: str) -> ModelVersion | None:
    """The version a reference names (module docstring), or None."""
    name = model.name if isinstance(model, Model) else model
    if not isinstance(ref, str) or not REF_RE.match(ref):
        return None
    versions = ModelVersion.objects.select_related("model", "artifact")
    if not ref.startswith("@"):
        found = versions.filter(model__name=name, label=ref).first()
        if found is not None:
            return found
    alias = ref.removeprefix("@")
    if not ALIAS_RE.match(alias):
        return None
    return versions.filter(model__name=name, aliases__name=alias).first()


def split_spec(spec: str) -> tuple[str, str]:
    """``fraud@production`` → ("fraud", "@production"); ``fraud:v3`` → ("fraud", "v3")."""
    if "@" in spec:
        model, _, alias = spec.partition("@")
        return model, "@" + alias
    model, _, label = spec.partition(":")
    return model, label


def resolve_spec(spec: str) -> ModelVersion | None:
    model, ref = split_spec(spec or "")
    return resolve(model, ref) if model and ref else None


def from_form(raw: str) -> ModelVersion | None:
    """A form's version choice: a version id, or ``model@alias`` (the alias options of the selects)."""
    raw = (raw or "").strip()
    if raw.isdigit():
        return ModelVersion.objects.select_related("model").filter(pk=int(raw)).first()
    return resolve_spec(raw) if "@" in raw else None


def choices(staged_only: bool = True) -> list[dict[str, Any]]:
    """The alias options for version selects: ``{"value": "fraud@production", "text": …}``."""
    rows = Alias.objects.select_related("model", "version").order_by("model__name", "name")
    if staged_only:
        rows = rows.filter(version__status=ModelVersion.Status.STAGED)
    return [
        {"value": f"{a.model.name}@{a.name}", "text": f"{a.model.name}@{a.name} (now {a.version.label})"} for a in rows
    ]


def set_alias(version: ModelVersion, name: str, *, request: HttpRequest | None = None, user: Any = None) -> Alias:
    """Point ``name`` at ``version`` (creating or moving it); audited with where it pointed before."""
    check_name(name)
    if version.status != ModelVersion.Status.STAGED:
        raise AliasError(
            "version_not_staged", f"{version} is {version.status}; only staged versions carry an alias.", "version", 409
        )
    if user is None and request is not None:
        user = request.user if getattr(request, "user", None) and request.user.is_authenticated else None
    try:
        with transaction.atomic():
            Model.objects.select_for_update().get(pk=version.model_id)
            alias = Alias.objects.select_for_update().filter(model_id=version.model_id, name=name).first()
            before = alias.version.label if alias else None
            if alias is None:
                alias = Alias.objects.create(model_id=version.model_id, name=name, version=version, updated_by=user)
            elif alias.version_id != version.pk:
                alias.version, alias.updated_by = version, user
                alias.save(update_fields=["version", "updated_by", "updated_at"])
            else:
                return alias  # already there: nothing changed, nothing to audit
            record(
                "model_alias.set",
                f"{version.model.name}@{name}",
                request=request,
                user=user,
                details={"model": version.model.name, "alias": name, "from": before, "to": version.label},
            )
    except IntegrityError as exc:
        raise AliasError(
            "conflict", "Another change of this alias arrived at the same time; try again.", "alias", 409
        ) from exc
    return alias


def remove_alias(model: Model, name: str, *, request: HttpRequest | None = None) -> None:
    with transaction.atomic():
        alias = Alias.objects.select_for_update().select_related("version").filter(model=model, name=name).first()
        if alias is None:
            raise AliasError("not_found", f"Model '{model.name}' has no alias '{name[:40]}'.", "alias", 404)
        label = alias.version.label
        alias.delete()
        record(
            "model_alias.remove",
            f"{model.name}@{name}",
            request=request,
            details={"model": model.name, "alias": name, "from": label, "to": None},
        )


def release_aliases(version: ModelVersion, *, request: HttpRequest | None = None) -> list[str]:
    """Take every alias off a version that stops being staged (archive); each removal is audited."""
    names = list(version.aliases.values_list("name", flat=True))
    for name in names:
        remove_alias(version.model, name, request=request)
    return names
