"""Checkpoint converters from the original repositories key layouts."""
from .depict import convert_depict, load_state_dict_strict  # noqa: F401
from .mctformer import convert_mctformer, mctformer_model_cfg  # noqa: F401
