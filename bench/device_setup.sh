#!/usr/bin/env bash
# On the GPU machine (torch and transformers already there): the wheels carried in the ignored .whl/
# into /tmp/site (all of them on a fresh machine, else nerfleet's alone), the corpus carried in
# .corpus/ into /tmp/corpus. Then run Python from outside the checkout with PYTHONPATH=/tmp/site
# (else the checkout's nerfleet/ folder shadows the installed package).
set -eu
pip_in() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
if [ -d /tmp/site/celery ]; then pip_in .whl/nerfleet-*.whl; else pip_in .whl/*.whl; fi
if [ -d .corpus ] && [ ! -d /tmp/corpus ]; then mkdir -p /tmp/corpus && cp -r .corpus/* /tmp/corpus/; fi
rm -rf /tmp/bench && cp -r bench /tmp/bench
cd /tmp && PYTHONPATH=/tmp/site python3 -c "import nerfleet.workers.continuous, celery, xgrammar, seqeval, torch, transformers; print('ready: torch', torch.__version__, 'transformers', transformers.__version__)"
