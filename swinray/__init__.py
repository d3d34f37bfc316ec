"""SwinRay: Ray-distributed self-supervised Swin UNETR for 3D medical imaging (the library).

``models/`` and ``search_spaces/`` sit at the top of the repository but are packages of this one,
``swinray.models`` and ``swinray.search_spaces`` (docs/development.md, Packaging). An installed wheel
holds them inside ``swinray/``. A source tree (a checkout, or the working dir ``ray job submit``
uploads) has them beside ``swinray/``: they are registered from there first, so its own code runs,
never another checkout's that an editable install points at.
"""
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

_TREE = _Path(__file__).resolve().parent.parent
if (_TREE / "platform" / "__init__.py").is_file():            # a source tree of this project
    for _name in ("models", "search_spaces"):
        _folder = _TREE / _name
        if f"{__name__}.{_name}" not in _sys.modules and (_folder / "__init__.py").is_file():
            _spec = _util.spec_from_file_location(f"{__name__}.{_name}", _folder / "__init__.py",
                                                  submodule_search_locations=[str(_folder)])
            _module = _util.module_from_spec(_spec)
            _sys.modules[_spec.name] = _module
            _spec.loader.exec_module(_module)
            globals()[_name] = _module          # swinray.models as an attribute too, as an import makes it
