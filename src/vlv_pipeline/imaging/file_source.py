"""The ``file`` image source: one image file, named by its path (``FileSource``); the
contract it keeps is in ``sources.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator

from vlv_pipeline.distributed import block
from vlv_pipeline.errors import InputError, MissingInputError
from vlv_pipeline.imaging.checks import Reason
from vlv_pipeline.imaging.reading import ReadPolicy, Refusal, link_refused, read_file, safe_name
from vlv_pipeline.imaging.sources import (
    BAD_NAME_DETAIL,
    ImageSource,
    Only,
    Part,
    Record,
    policy_for,
    unsupported_name,
)


class FileSource(ImageSource):
    """One image file, named by its path (``caption.source=photo.jpg``); its ref is the
    file's name.

    It is read as a folder's entry is (``FolderSource``): a symbolic link is refused unless
    the policy follows links (then a dangling one or a loop is a ``broken_link``), a FIFO or
    device is never opened, a file over the cap is refused from its size, a name that is
    not an image type is ``unsupported_extension``. The file is named on purpose, so a name
    starting with "." is read (a folder's walk skips hidden entries)."""

    kind = "file"

    def exists(self) -> bool:
        return os.path.lexists(self.path) and not os.path.isdir(self.path)

    def ref(self) -> str:
        name = os.path.basename(os.path.normpath(self.path))
        return safe_name(name) or name

    def _records(self, only: Only, part: Part, policy: ReadPolicy) -> Iterator[Record]:
        if not os.path.lexists(self.path):
            raise MissingInputError(f"image file {self.path!r} does not exist")
        if os.path.isdir(self.path):
            raise InputError(f"image source {self.path!r} is a folder: use kind folder")
        if not block(1, part):
            return
        ref = self.ref()
        if only is not None and ref not in only:
            return
        data, refusal = self._read(ref, policy_for(policy, only, ref))
        yield Record(ref, data, rejected=refusal)

    def _read(self, ref: str, policy: ReadPolicy) -> tuple[bytes | None, Refusal | None]:
        """The file's bytes, or why not: a folder entry's checks, in a folder's order."""
        if safe_name(os.path.basename(self.path)) is not None:
            return None, (Reason.BAD_NAME, BAD_NAME_DETAIL)
        if os.path.islink(self.path) and not policy.follow_links:
            return None, link_refused(self.path, "files")
        refusal = unsupported_name(ref)
        if refusal is not None:
            return None, refusal
        return read_file(self.path, policy)
