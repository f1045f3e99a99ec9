"""Transfer types: how a pre-trained backbone is adapted (``--transfer_type``).

Each type's method lives in its own small module of this folder and registers itself by name; its
settings (a ``MethodConfig`` dataclass) live in the module of the same name in
``models/transfer_settings``, importable without torch. Every module of both folders is imported,
so adding a type is adding one file to each. The settings become flags, ``create_model`` keywords
and checkpoint entries without any other edit (``models/transfer/base.py``).
"""
import importlib
import pkgutil

from .base import (TRANSFER_ALIASES, TRANSFER_TYPES, BlockRange, MethodConfig, PromptSettings,
                   TransferMethod, all_setting_fields, canonical_transfer_type,
                   classifier_modules, folded_for_inference, get_transfer_class, make_config,
                   register_transfer, resolve_block_range, setting, setting_fields)
from ..transfer_settings import TRANSFER_SETTINGS

# Import every module of the folder for its registration side effect, in a fixed order.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

_no_method = sorted(set(TRANSFER_SETTINGS) - set(TRANSFER_TYPES))
if _no_method:
    raise ImportError(f"transfer types {', '.join(_no_method)}: settings registered in "
                      f"models/transfer_settings but no method in models/transfer")

__all__ = ["TRANSFER_ALIASES", "TRANSFER_TYPES", "BlockRange", "MethodConfig", "PromptSettings",
           "TransferMethod", "all_setting_fields", "canonical_transfer_type",
           "classifier_modules", "folded_for_inference",
           "get_transfer_class", "make_config", "register_transfer", "resolve_block_range",
           "setting", "setting_fields"]
