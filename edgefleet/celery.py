"""The Celery app: worker and beat share it; tasks live in each app's tasks.py.

Every task is a ``GuardedTask`` (``edgefleet/guard.py``); queues, routes and time limits are in
``edgefleet/queues.py``, periodic jobs in ``edgefleet/schedule.py``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edgefleet.settings")

app = Celery("edgefleet", task_cls="edgefleet.guard:GuardedTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
