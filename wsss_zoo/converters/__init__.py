"""Checkpoint converters from the original repositories key layouts."""
from .depict import convert_depict, load_state_dict_strict  # noqa: F401
from .mctformer import convert_mctformer, mctformer_model_cfg  # noqa: F401
from .tscam import convert_tscam, tscam_model_cfg  # noqa: F401
from .weaktr_gcd import convert_weaktr_gcd  # noqa: F401
from .weaktr import convert_weaktr, weaktr_model_cfg  # noqa: F401
from .transcam import convert_transcam, transcam_model_cfg  # noqa: F401
from .stage1_encoder import stage1_encoder_to_vit  # noqa: F401
