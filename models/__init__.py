"""VideoMAE ViT backbone, checkpoint loading, transfer types and cost reports.

    from models import create_model, load_pretrained
    model = create_model("vit_base_patch16_224", num_classes=101, all_frames=16,
                         transfer_type="apt", prompt_num_tokens=400, prompt_reparam=True)
    report = load_pretrained(model, "videomae_vit_b_k400_pretrain.pth")

The names below are re-exported lazily (:func:`utils.lazy.lazy_exports`): ``models.config`` and
``models.transfer_settings`` (the flags and settings of the command lines) import without torch;
``models.create_model`` imports the network modules when first used.
"""
from utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".factory": ["create_model", "create_model_from_config"],
    ".cost": ["cost_report", "parameter_counts"],
    ".method_state": ["backbone_reference", "file_sha256", "load_method", "load_method_state",
                      "save_method", "trainable_state_dict", "trains_whole_model"],
    ".pretrained": ["LoadReport", "load_pretrained"],
    ".run_checkpoints": ["read_checkpoint"],
    ".serialization": ["CheckpointError", "torch_load"],
    ".flops": ["count_forward_flops", "count_train_step_flops", "flop_counter"],
    ".transfer": ["TRANSFER_TYPES", "TransferMethod", "get_transfer_class"],
    ".transfer_settings": ["MethodConfig", "make_config", "setting_fields"],
    ".pretrain": ["create_pretrain_model", "list_pretrain_models"],
    ".vit": ["MODEL_REGISTRY", "Attention", "Block", "VisionTransformer", "list_models"],
})
