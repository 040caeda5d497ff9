"""The relay: ``voxgate serve``, a caching server in the bossDB REST and precomputed dialects."""

from .app import Relay, build_app, serve
from .config import RelayConfig, load_config

__all__ = ["Relay", "RelayConfig", "build_app", "load_config", "serve"]
