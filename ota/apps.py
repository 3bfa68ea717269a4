from django.apps import AppConfig


class OtaConfig(AppConfig):
    name = "ota"
