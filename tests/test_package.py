import importlib


def test_pack_exports_node_mappings():
    pack = importlib.import_module("wanfp4")
    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    assert isinstance(pack.NODE_DISPLAY_NAME_MAPPINGS, dict)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) <= set(pack.NODE_CLASS_MAPPINGS)


def test_model_packages_do_not_import_comfyui():
    import pathlib
    import re

    root = pathlib.Path(importlib.import_module("wanfp4").__file__).parent
    pattern = re.compile(r"^\s*(from|import)\s+(comfy|folder_paths|comfy_api|server|nodes)\b", re.M)
    offenders = [
        str(p.relative_to(root))
        for sub in ("wan", "quant", "attention")
        for p in (root / sub).rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
