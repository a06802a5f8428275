"""ARF: anchor-based robust finetuning of CLIP-like models (Han et al., CVPR 2024)."""

__version__ = "0.1.0"
