"""The Django side of ``notify.crypto``: the source key comes from settings."""

import secrets as _random

from django.conf import settings

from notify import crypto

SECRET_PREFIX = "whsec_"


def _source() -> str:
    return getattr(settings, "EDGEFLEET_SECRETS_KEY", "") or settings.SECRET_KEY


def conceal(plain: str) -> str:
    return crypto.encrypt(_source(), plain)


def reveal(token: str) -> str:
    return crypto.decrypt(_source(), token)


def new_signing_secret() -> str:
    return SECRET_PREFIX + _random.token_urlsafe(32)
