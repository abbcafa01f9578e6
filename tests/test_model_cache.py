"""The model cache: hits reuse the object, another load option drops the old object (collected, cycles
included) before the new load runs, clear() empties it; the log lines say which."""
import weakref

from wanfp4.wan.model_cache import ModelCache, make_key


class Model:
    def __init__(self):
        self.me = self          # a reference cycle, like a swapped model and its swapper


def test_hit_returns_the_same_object_and_counts():
    cache = ModelCache()
    key = make_key("dit", [], quant="fp8")
    a = cache.get_or_load(key, "model", Model)
    assert cache.get_or_load(key, "model", lambda: (_ for _ in ()).throw(AssertionError("reloaded"))) is a
    assert (cache.loads, cache.hits, len(cache)) == (1, 1, 1)


def test_other_options_drop_the_old_object_before_loading():
    cache = ModelCache()
    old = weakref.ref(cache.get_or_load(make_key("dit", [], quant="fp8"), "model", Model))
    seen = []

    def load_new():
        seen.append(old() is None)          # the old one is already gone while the new one loads
        return Model()

    cache.get_or_load(make_key("dit", [], quant="fp4"), "model", load_new)
    assert seen == [True] and len(cache) == 1 and cache.loads == 2
    other = cache.get_or_load(make_key("vae", []), "VAE", Model)   # another kind stays beside it
    assert len(cache) == 2 and other is not None
    assert cache.clear() == 2 and len(cache) == 0
