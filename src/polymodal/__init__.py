"""polymodal: train, evaluate, compress, index and serve multimodal embeddings."""

from polymodal.config import DualEncoderConfig, from_dict, to_dict
from polymodal.errors import PolymodalError
from polymodal.factory import create_model, get_tokenizer, get_transforms, load_model, save_model
from polymodal.models import DualEncoder, DualEncoderOutput
from polymodal.registry import list_presets

__version__ = "0.1.0"

__all__ = [
    "DualEncoder", "DualEncoderConfig", "DualEncoderOutput", "PolymodalError", "__version__",
    "create_model", "from_dict", "get_tokenizer", "get_transforms", "list_presets", "load_model",
    "save_model", "to_dict",
]
