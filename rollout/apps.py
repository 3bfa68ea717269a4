from django.apps import AppConfig


class RolloutConfig(AppConfig):
    name = "rollout"
    verbose_name = "Releases and rollout campaigns"

    def ready(self) -> None:
        from rollout.campaign_layer import register_manifest_hook

        register_manifest_hook()
