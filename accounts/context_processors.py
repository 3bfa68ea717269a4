from django.http import HttpRequest

from accounts.roles import ADMIN, OPERATOR, has_role, role_of


def roles(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    return {
        "user_role": role_of(user),
        "can_operate": has_role(user, OPERATOR),
        "is_admin": has_role(user, ADMIN),
    }
