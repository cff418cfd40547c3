"""minima: do flatter, more robust pretraining minima make better starting points for finetuning?"""

__version__ = "0.1.0"
