"""The transfer types' settings and names, importable without torch (the flags of
``run_class_apt.py``; see ``models/transfer_settings/base.py``).

Each type's settings live in a small module of this folder, named as its method's module in
``models/transfer``; every module here is imported, so adding a type is adding one file here and
one there, with no other edit.
"""
import importlib
import pkgutil

from .base import (TRANSFER_ALIASES, TRANSFER_SETTINGS, TRANSFER_TITLES, BlockRange,
                   MethodConfig, PromptSettings, all_setting_fields, canonical_transfer_type,
                   check_num_tokens, make_config, register_settings, resolve_block_range, setting,
                   setting_fields, settings_class)

# Import every module of the folder for its registration side effect, in a fixed order.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["TRANSFER_ALIASES", "TRANSFER_SETTINGS", "TRANSFER_TITLES", "BlockRange",
           "MethodConfig", "PromptSettings", "all_setting_fields", "canonical_transfer_type",
           "check_num_tokens", "make_config", "register_settings", "resolve_block_range",
           "setting", "setting_fields", "settings_class"]
