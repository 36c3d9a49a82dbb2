"""The `synthetic_heads` TFDS dataset (importing this package registers the builder)."""
from data.synthetic_heads.builder import SyntheticHeads  # noqa: F401
