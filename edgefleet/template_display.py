"""Template filters of ``edgefleet.display``, built into every template (settings ``TEMPLATES``).

``{{ value|plain }}`` for any JSON value, ``{{ n|size }}`` for bytes, ``{{ n|number }}`` for counts,
``{{ shape|shape }}`` for tensor shapes, ``{{ digest|short_hash }}``, ``{% for k, text, long in d|pairs %}``.
"""

from django import template

from edgefleet import display

register = template.Library()

register.filter("plain", display.plain)
register.filter("size", display.size)
register.filter("shape", display.shape)
register.filter("pairs", display.pairs)
register.filter("short_hash", display.short_hash)
register.filter("percent", display.percent)


@register.filter("number")
def number(value: object) -> str:
    if isinstance(value, bool | int | float):
        return display.number(value)
    return display.plain(value)
