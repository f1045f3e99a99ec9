"""The three types with no settings: ``end2end``, ``random`` and ``linear``."""
from .base import MethodConfig, register_settings

register_settings("end2end", "full fine-tuning")(MethodConfig)
register_settings("random", "training from a random backbone")(MethodConfig)
register_settings("linear", "linear probing")(MethodConfig)
