"""autopeft: multi-objective search for parameter-efficient fine-tuning configurations."""

__version__ = "0.1.0"
