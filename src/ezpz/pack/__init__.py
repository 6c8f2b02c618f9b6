"""``ezpz-tar-env``'s library: pack a venv, a conda environment or any directory into one
archive (:func:`pack`), and the pieces it is built from (tree walk, writer, codecs)."""

from .packer import (
    Progress,
    check_for_tarball,
    create_tarball,
    default_archive_path,
    make_tarfile,
    pack,
    python_facts,
    resolve_output,
)

__all__ = ["pack", "default_archive_path", "python_facts", "resolve_output",
           "check_for_tarball", "make_tarfile", "create_tarball", "Progress"]
