from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "ops"
    verbose_name = "Operations: metrics, request ids, structured logs"

    def ready(self) -> None:
        from ops import celery_hooks

        celery_hooks.connect()
