"""featup: upsample the features of any vision backbone to any resolution without changing their meaning."""

from featup import _torchvision_compat

__version__ = "0.1.0"

# Arming the hook is cheap (no torch import) and makes `import timm` work next to a CPU torch.
_torchvision_compat.install()
