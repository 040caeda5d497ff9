"""``bossdb://``: bossDB (and any server in its REST dialect, such as a voxgate relay).

```
bossdb://collection/experiment/channel                      host and token from configuration
bossdb://http://127.0.0.1:8080/collection/experiment/channel  an explicit server
```

Configuration, first found wins: the ``server=``/``token=`` options; the environment
(``VOXGATE_BOSS_URL``, ``VOXGATE_BOSS_TOKEN``, then intern's ``INTERN_PROTOCOL``,
``INTERN_HOST``, ``INTERN_TOKEN``); the voxgate config file (``$VOXGATE_CONFIG`` or
``~/.config/voxgate/config.toml``, table ``[bossdb]`` with ``url`` and ``token``); intern's
``~/.intern/intern.cfg`` (read, never written).  Without any of them the public
https://api.bossdb.io is used with the token ``public``.

Cutouts of any size are split into requests aligned to the server's cuboids (512 x 512 x 16,
from the origin) and run concurrently over one pooled client, each decoded straight into one
preallocated output array.  Writes split the same way; an all-zero block is sent like any other.
A failed block raises: no partial data is ever returned.

The package by concern: :mod:`.client` (server settings, location parsing, the pooled
clients), :mod:`.project` (:class:`BossProject`, the project, metadata and object services,
and :class:`BossMetadata`) and :mod:`.remote` (the Remote: cutouts and server-side work).
"""

from __future__ import annotations

from .client import PUBLIC_URL as PUBLIC_URL
from .client import BossSettings as BossSettings
from .client import boss_settings
from .project import BossMetadata, BossProject
from .remote import CUBOID as CUBOID
from .remote import REQUEST_BYTES as REQUEST_BYTES
from .remote import BossDBRemote

__all__ = ["BossDBRemote", "BossMetadata", "BossProject", "boss_settings"]
