"""Helpers shared by the storage tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from dataclasses import dataclass

from catenary.storage.fs import FileSystem


@dataclass
class FsCase:
    """A file system under test and a directory on it that exists."""

    fs: FileSystem
    root: str
    kind: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])
