"""fer_hf: fine-tune timm ResNets on FER-2013 with the Hugging Face stack."""

from fer_hf.labels import LABEL_NAMES

__version__ = "0.1.0"
__all__ = ["LABEL_NAMES", "__version__"]
