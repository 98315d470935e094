"""popjax: explainable popularity prediction for social-media videos, in JAX/Flax."""
__version__ = "0.1.0"

from popjax.backbone import Backbone

__all__ = ["Backbone"]
