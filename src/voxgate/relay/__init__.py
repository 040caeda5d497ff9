"""The relay: ``voxgate serve``, a caching server in the bossDB REST and precomputed dialects."""

from .app import build_app, serve
from .config import RelayConfig, load_config
from .state import Relay

__all__ = ["Relay", "RelayConfig", "build_app", "load_config", "serve"]
