"""The Celery app: worker and beat share it; tasks live in each app's tasks.py."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edgefleet.settings")

app = Celery("edgefleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
