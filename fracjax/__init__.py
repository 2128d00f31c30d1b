"""fracjax: bone-fracture classification of X-ray images in JAX/Flax."""

__version__ = "0.1.0"

from fracjax import models  # noqa: E402

__all__ = ["models", "__version__"]
