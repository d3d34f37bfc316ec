"""Launchers for ``python -m platform.<verb>``, and the standard library's ``platform`` module.

Run from the repository root, this folder shadows the stdlib module of the same name. Ray, torch,
uuid and pytest call ``platform.system()`` and friends, so we load the real stdlib module from
its file and re-export its whole namespace. Library code never lives here: Ray workers import
the stdlib module first and cannot see ``platform.<submodule>`` (see ../shared/STYLE.md).
"""
import importlib.util as _importlib_util
import os as _os
import sysconfig as _sysconfig

_STDLIB_FILE = _os.path.join(_sysconfig.get_paths()["stdlib"], "platform.py")
_spec = _importlib_util.spec_from_file_location("_stdlib_platform", _STDLIB_FILE)
_stdlib = _importlib_util.module_from_spec(_spec)
_spec.loader.exec_module(_stdlib)

# Every public and private name (some libraries reach for platform._syscmd_ver and the like);
# the module's identity stays ours so that this remains a package.
_IDENTITY = {"__name__", "__file__", "__path__", "__spec__", "__loader__", "__package__",
             "__doc__", "__builtins__", "__cached__"}
globals().update({k: v for k, v in vars(_stdlib).items() if k not in _IDENTITY})
