"""DVID ``keyvalue`` instances as a mutable mapping of str keys to bytes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any
from urllib.parse import quote

from ...errors import (
    DtypeError,
    InvalidRequestError,
    RemoteNotFoundError,
    redact,
)
from ...formats.dvid_proto import decode_keyvalues, encode_keys, encode_keyvalues
from .._http import HTTPClient, server_answer
from .client import _call, answered


# -- keyvalue -------------------------------------------------------------------------------------
class DVIDKeyValue(MutableMapping[str, bytes]):
    """A keyvalue instance at one node as a mapping of str -> bytes (missing keys: KeyError)."""

    def __init__(self, client: HTTPClient, node: str, name: str) -> None:
        self.client, self.node, self.name = client, node, name
        self._base = f"/api/node/{node}/{name}"

    def __repr__(self) -> str:
        return redact(f"<DVIDKeyValue {self.client.base_url}/{self.node}/{self.name}>")

    @staticmethod
    def _k(key: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidRequestError(f"keyvalue keys are non-empty strings, got {key!r}")
        return quote(key, safe="")

    def __getitem__(self, key: str) -> bytes:
        try:
            return _call(self.client, "GET", f"{self._base}/key/{self._k(key)}",
                         what=f"key {key!r} of {self.name}").content
        except RemoteNotFoundError:
            raise KeyError(key) from None

    def get_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of a value (an HTTP Range request)."""
        if not 0 <= start < stop:
            raise InvalidRequestError(f"byte range [{start}, {stop}) is empty or negative")
        try:
            return _call(self.client, "GET", f"{self._base}/key/{self._k(key)}",
                         headers={"Range": f"bytes={start}-{stop - 1}"}, expect=(200, 206),
                         what=f"bytes of key {key!r}").content
        except RemoteNotFoundError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: bytes) -> None:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise DtypeError(f"keyvalue values are bytes, got {type(value).__name__}")
        _call(self.client, "POST", f"{self._base}/key/{self._k(key)}", content=bytes(value),
              what=f"storing key {key!r} in {self.name}", idempotent=True)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        _call(self.client, "DELETE", f"{self._base}/key/{self._k(key)}",
              what=f"deleting key {key!r} of {self.name}")

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not key:
            return False
        resp = _call(self.client, "HEAD", f"{self._base}/key/{self._k(key)}", expect=(200, 404),
                     what=f"checking key {key!r}")
        return resp.status_code == 200

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_list())

    def __len__(self) -> int:
        return len(self.keys_list())

    def keys_list(self) -> list[str]:
        return _keys(answered(_call(self.client, "GET", f"{self._base}/keys",
                                    what=f"keys of {self.name}"), f"keys of {self.name}", list),
                     f"keys of {self.name}")

    def keys_between(self, first: str, last: str) -> list[str]:
        """Keys ``first <= key <= last`` (byte-wise order, both ends inclusive, like DVID)."""
        what = f"key range of {self.name}"
        return _keys(answered(_call(self.client, "GET",
                                    f"{self._base}/keyrange/{self._k(first)}/{self._k(last)}",
                                    what=what), what, list), what)

    def items_between(self, first: str, last: str) -> dict[str, bytes]:
        """Keys and values with ``first <= key <= last``, in one request."""
        resp = _call(self.client, "GET",
                     f"{self._base}/keyrangevalues/{self._k(first)}/{self._k(last)}",
                     what=f"key range values of {self.name}")
        return decode_keyvalues(resp.content)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Values of ``keys`` in one request; absent keys are left out."""
        wanted = list(keys)
        resp = _call(self.client, "GET", f"{self._base}/keyvalues", content=encode_keys(wanted),
                     what=f"values of {len(wanted)} keys")
        got = decode_keyvalues(resp.content)
        return {k: v for k, v in got.items() if v or k in self}

    def put_many(self, items: dict[str, bytes]) -> None:
        """Store several values in one request."""
        _call(self.client, "POST", f"{self._base}/keyvalues", content=encode_keyvalues(items),
              what=f"storing {len(items)} keys", idempotent=True)


def _keys(doc: list[Any], what: str) -> list[str]:
    """The key names of a keys/keyrange answer (a JSON list of strings)."""
    with server_answer(f"{what}: the server answered"):
        if not all(isinstance(k, str) for k in doc):
            raise TypeError(f"a list of key names was expected, not {doc!r:.80}")
    return doc
