"""featup: upsample the features of any vision backbone to any resolution without changing their meaning."""

__version__ = "0.1.0"
