"""The engine installs alone: its modules import without the application extras (pip install 'blockprune[cli]')."""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXTRAS = ("matplotlib", "accelerate", "PIL", "datasets", "onnx", "onnxruntime", "pandas", "pyarrow")
ENGINE = ("engine.config", "engine.masks", "engine.schedule", "engine.layers", "engine.pruner", "surgery.arch",
          "surgery.headbias", "surgery.shrink", "store.saving", "store.size", "deploy.counts", "deploy.measure",
          "deploy.plan", "report.card", "app.hub")

# a finder that makes the extras look installed (so transformers' availability checks pass) but fail on import,
# which is what importing a missing package would do
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, importlib.machinery, sys
    class Refuse(importlib.abc.Loader):
        def create_module(self, spec):
            return None
        def exec_module(self, module):
            raise ModuleNotFoundError(f"No module named {{module.__name__!r}} (hidden by the test)")
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {EXTRAS!r}:
                return importlib.machinery.ModuleSpec(name, Refuse())
    sys.meta_path.insert(0, Blocker())
""")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300)


def test_engine_modules_import_without_the_application_extras():
    done = run_python(f"""
        import importlib
        for name in {ENGINE!r}:
            importlib.import_module("blockprune." + name)
        import blockprune
        blockprune.load_pruned, blockprune.surgery.shrink, blockprune.Pruner, blockprune.deploy.measure
        print("engine ok")
    """)
    assert done.returncode == 0, done.stderr
    assert "engine ok" in done.stdout


def test_the_pipeline_says_which_extra_to_install(tmp_path):
    argv = ["prune", "--output-dir", str(tmp_path / "never-written")]
    done = run_python(f"""
        import sys
        from blockprune.cli import main
        sys.exit(main({argv!r}))
    """)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "pip install 'blockprune[cli]'" in lines[0] and "Traceback" not in done.stderr


def test_the_flat_layout_import_paths_still_load_the_moved_modules():
    import importlib

    import blockprune
    from blockprune.surgery import shrink as moved

    for old, new in blockprune.MOVED.items():
        assert importlib.import_module(f"blockprune.{old}") is importlib.import_module(f"blockprune.{new}"), old
    from blockprune.shrink import shrink  # a documented import of the flat layout

    assert shrink is moved.shrink
    from blockprune.report import render_report
    from blockprune.report.render import render_report as at_home

    assert render_report is at_home
