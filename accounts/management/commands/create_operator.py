from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser

from accounts.roles import ORDER


class Command(BaseCommand):
    help = "Create (or update) a dashboard login with a role: viewer, operator or admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--password", required=True)
        parser.add_argument("--role", choices=ORDER, default="operator")

    def handle(self, username: str, password: str, role: str, **options: object) -> None:
        user, created = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        user.is_staff = role == "admin"
        user.save()
        user.groups.set([Group.objects.get_or_create(name=role)[0]])
        self.stdout.write(f"{'Created' if created else 'Updated'} {role} {username}")
