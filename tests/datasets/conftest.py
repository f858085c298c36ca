import builtins
import importlib
import importlib.resources
import os
import pickle
import shlex
import sys

import pytest


@pytest.fixture
def offline_tfds(monkeypatch):
    """Lets TFDS prepare a real dataset from local files: only the network download is replaced.

    `serve(files)` maps each download URL's file name to a local path; TFDS then runs its own
    dataset builder on those files and writes a real prepared dataset.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    try:
        importlib.import_module("importlib_resources")
    except ImportError:
        # TFDS' builder needs this backport (through etils); the standard library module has
        # the same API on Python >= 3.9.
        monkeypatch.setitem(sys.modules, "importlib_resources", importlib.resources)

    def serve(files):
        def local_path(url):
            name = os.path.basename(url)
            if name not in files:
                raise AssertionError(f"unexpected download of {url}")
            return files[name]

        def download(self, url_or_urls):
            if isinstance(url_or_urls, dict):
                return {key: local_path(url) for key, url in url_or_urls.items()}
            return local_path(url_or_urls)

        monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
        monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download)

    return serve


class RunsCode:
    """An object whose unpickling calls `function(argument)`: the payload of a hostile file."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.fixture
def code_payload(tmp_path):
    """`make(kind)` -> (an object that creates `marker` when unpickled, marker).

    kind 'system' runs `touch marker` through os.system, 'eval' opens it through builtins.eval.
    Each payload is checked to be live (unpickling it does create the marker), so a test that
    finds no marker shows the loader never unpickled it.
    """
    def make(kind="system"):
        marker = tmp_path / f"MARKER_{kind}"
        if kind == "system":
            payload = RunsCode(os.system, f"touch {shlex.quote(str(marker))}")
        else:
            payload = RunsCode(builtins.eval, f"open({str(marker)!r}, 'w').close()")
        pickle.loads(pickle.dumps(payload))
        assert marker.exists(), "the payload does not run"
        marker.unlink()
        return payload, marker

    return make
