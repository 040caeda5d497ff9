"""The storage layer under formats and Remotes alike.

Key-value access to local files, gs://, s3:// and read-only http(s):// through tensorstore's
kvstore drivers (:mod:`.kvstore`), atomic local writes, location joining, splitting a voxgate
URL into format scheme and location (:mod:`.locations`), directory listing
(:mod:`.directory`), one writer at a time for a file read, changed and written back
(:mod:`.locking`), CloudFiles' compressed-suffix convention and decompression
(:mod:`.compression`) and the length units stored metadata uses (:mod:`.units`).  It imports
nothing of voxgate but ``errors``.
"""

from __future__ import annotations

from .compression import GZIP_MAGIC, SUFFIXES, decompress
from .directory import Directory
from .kvstore import (
    RANGES_IGNORED_TTL,
    WRITE_FILE_IO_CONCURRENCY,
    atomic_write,
    check_bucket,
    check_spec_buckets,
    ignores_ranges,
    is_local,
    join,
    json_object,
    kvstore_exists,
    kvstore_spec,
    local_path,
    note_ranges_ignored,
    ranges_ignored,
    read_json,
    remove_tree,
    s3_endpoints,
    s3_settings,
    set_copy_concurrency,
    set_request_retries,
    split_query,
    ts_context,
    ts_errors,
    ts_write_context,
    update_conditionally,
    with_s3_settings,
    write_json,
)
from .locations import STORAGE_SCHEMES, split_url, state_dir
from .locking import file_lock, is_locked
from .units import LENGTH_UNITS_NM, UNITS_NM, length_unit_nm

__all__ = [
    "GZIP_MAGIC",
    "STORAGE_SCHEMES",
    "SUFFIXES",
    "LENGTH_UNITS_NM",
    "RANGES_IGNORED_TTL",
    "UNITS_NM",
    "WRITE_FILE_IO_CONCURRENCY",
    "Directory",
    "atomic_write",
    "check_bucket",
    "check_spec_buckets",
    "decompress",
    "file_lock",
    "is_locked",
    "ignores_ranges",
    "is_local",
    "join",
    "kvstore_exists",
    "kvstore_spec",
    "s3_endpoints",
    "length_unit_nm",
    "local_path",
    "json_object",
    "note_ranges_ignored",
    "ranges_ignored",
    "read_json",
    "remove_tree",
    "s3_settings",
    "set_copy_concurrency",
    "set_request_retries",
    "split_query",
    "split_url",
    "state_dir",
    "ts_context",
    "ts_errors",
    "ts_write_context",
    "update_conditionally",
    "with_s3_settings",
    "write_json",
]
