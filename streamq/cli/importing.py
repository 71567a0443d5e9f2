"""A task module that fails to import, said in one line: ``file:line: Type: message``.

Whatever the import raised (a SyntaxError, an ImportError inside the module, a
NameError at its top level, a ``ConfigurationError`` of a decorator) becomes an
``ModuleImportError``, a ``ConfigurationError``: the CLI prints it as one line and exits 2,
and ``--reload`` logs it and waits for the next save.
"""

from __future__ import annotations

import os
import sysconfig
import traceback

from ..base.errors import ConfigurationError

_STREAMQ_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARY_DIRS = tuple(os.path.abspath(p) + os.sep for p in {
    sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")} if p)


class ModuleImportError(ConfigurationError):
    """A task module could not be imported; ``path`` is the file the error is in
    (None when unknown)."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def import_failed(module_name: str, exc: BaseException) -> ModuleImportError:
    """The one-line error for ``import module_name`` having raised ``exc``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ModuleNotFoundError) and exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")):
        return ModuleImportError(f"cannot import module {module_name!r}: {text} (the current "
                            f"directory and PYTHONPATH are searched)")
    path, line = _where(exc)
    if isinstance(exc, SyntaxError):  # its own location: the frames are importlib's
        text = " ".join(str(exc.msg).split())
    where = f"{_shown(path)}:{line}: " if path else ""
    return ModuleImportError(f"cannot import module {module_name!r}: {where}"
                        f"{type(exc).__name__}: {text}", path)


def _where(exc: BaseException) -> tuple[str | None, int | None]:
    """The file and line to show: a SyntaxError's own, else the innermost frame of
    the user's code (not importlib's, streamq's or an installed library's), else the
    innermost frame at all."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<")]
    if not frames:
        return None, None
    mine = [f for f in frames if not _library(os.path.abspath(f.filename))]
    frame = (mine or frames)[-1]
    return frame.filename, frame.lineno


def _library(path: str) -> bool:
    return path.startswith(_STREAMQ_DIR + os.sep) or path.startswith(_LIBRARY_DIRS)


def _shown(path: str | None) -> str:
    """``path`` relative to the working directory when inside it."""
    if not path:
        return ""
    full, cwd = os.path.abspath(path), os.getcwd()
    return os.path.relpath(full, cwd) if full.startswith(cwd + os.sep) else full
