"""kserve-diffusion: a KServe model server for Hugging Face diffusers pipelines."""

__version__ = "0.1.0"
