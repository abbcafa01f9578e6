"""The pack as ComfyUI loads it: imported from its folder path under a mangled module name, with
a stand-in for the host modules it talks to (folder_paths, comfy.utils, comfy.model_management).
Checks the relative imports, combos from model folders, progress, interrupt and cache release."""
import importlib.util
import os
import sys
import types

import pytest

import wanfp4

ROOT = os.path.dirname(wanfp4.__file__)


class FakeHost:
    def __init__(self, tmp_path):
        self.models = tmp_path / "models"
        (self.models / "vae").mkdir(parents=True)
        (self.models / "vae" / "wan_2.1_vae.safetensors").write_bytes(b"x")
        self.output = tmp_path / "output"
        self.interrupted = False
        self.progress = []
        self.unloaded = 0

        fp = types.ModuleType("folder_paths")
        fp.get_folder_paths = lambda name: [str(self.models / name)]
        fp.get_filename_list = lambda name: sorted(os.listdir(self.models / name)) if (self.models / name).is_dir() else []
        fp.get_full_path = lambda name, f: str(self.models / name / f) if (self.models / name / f).exists() else None
        fp.get_output_directory = lambda: str(self.output)
        fp.get_temp_directory = lambda: str(self.output / "temp")

        host = self

        class ProgressBar:
            def __init__(self, total):
                self.total = total

            def update_absolute(self, value, total=None):
                host.progress.append((value, total))

        class InterruptProcessingException(BaseException):
            pass

        comfy = types.ModuleType("comfy")
        utils = types.ModuleType("comfy.utils")
        utils.ProgressBar = ProgressBar
        mm = types.ModuleType("comfy.model_management")
        mm.InterruptProcessingException = InterruptProcessingException

        def throw():
            if host.interrupted:
                host.interrupted = False
                raise InterruptProcessingException()

        def unload_all_models():
            host.unloaded += 1

        mm.throw_exception_if_processing_interrupted = throw
        mm.unload_all_models = unload_all_models
        mm.get_torch_device = lambda: __import__("torch").device("cpu")
        comfy.utils, comfy.model_management = utils, mm
        self.modules = {"folder_paths": fp, "comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm}


@pytest.fixture
def hosted(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path)
    for name, mod in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    name = ROOT.replace(".", "_x_").replace(os.sep, "_")  # how ComfyUI names a pack's module
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, pack)
    spec.loader.exec_module(pack)
    yield fake, pack, name
    for mod in [m for m in sys.modules if m.startswith(name + ".")]:
        del sys.modules[mod]


def test_pack_loads_under_its_folder_name(hosted):
    fake, pack, name = hosted
    assert "WanFP4InfiniteTalkSampler" in pack.NODE_CLASS_MAPPINGS
    cls = pack.NODE_CLASS_MAPPINGS["WanFP4VAELoader"]
    assert cls.__module__.startswith(name + ".nodes")
    assert cls.INPUT_TYPES()["required"]["model_name"][0] == ["wan_2.1_vae.safetensors"]


def test_host_adapter_uses_comfy(hosted):
    fake, pack, name = hosted
    host = sys.modules[name + ".nodes.host"]
    assert host.has_host()
    assert host.resolve_model("vae", "wan_2.1_vae.safetensors").endswith("wan_2.1_vae.safetensors")
    with pytest.raises(FileNotFoundError, match=str(fake.models / "vae")):
        host.resolve_model("vae", "missing.safetensors")
    assert host.output_directory() == str(fake.output)
    bar = host.Progress(4)
    bar.update(1)
    bar.update(3)
    assert fake.progress == [(1, 4), (4, 4)]
    fake.interrupted = True
    with pytest.raises(BaseException) as e:
        host.check_interrupt()
    assert type(e.value).__name__ == "InterruptProcessingException"


def test_unload_models_empties_the_cache(hosted):
    fake, pack, name = hosted
    cache = sys.modules[name + ".wan.model_cache"].MODEL_CACHE
    cache.get_or_load(("k", (), ()), "thing", lambda: object())
    assert len(cache) == 1
    sys.modules["comfy.model_management"].unload_all_models()
    assert len(cache) == 0 and fake.unloaded == 1
