"""mechmod: which modality does a multimodal LLM follow when image and text
disagree, why, and where inside the network is the choice made."""

__version__ = "0.1.0"
