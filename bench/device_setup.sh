#!/usr/bin/env bash
# On the GPU machine (torch and transformers already there): the wheels carried in the ignored .whl/
# into /tmp/site (all of them on a fresh machine, else nerfleet's alone), the corpus carried in
# .corpus/ (a folder, or a .tar.xz of it: 0.6 MB instead of 6) into /tmp/corpus. Then run Python
# from outside the checkout with PYTHONPATH=/tmp/site (else the checkout's nerfleet/ folder shadows
# the installed package). xgrammar (and apache-tvm-ffi) may be left out of .whl to make room: only
# guided decoding needs them.
#
# A carry is 64 MiB with the working tree (5.3 MB): a real model larger than that travels in pieces
# in ignored folders over back-to-back calls (the machine is kept 30 s idle), e.g. SmolLM2's 98 MB
# GGUF in two: `cp .m1/p /tmp/gguf.1` in the first call, `cat /tmp/gguf.1 .m2/p > /tmp/m.gguf` in the
# second, which carries .whl and .corpus too.
set -eu
pip_in() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$@"; }
if [ -d /tmp/site/celery ]; then pip_in .whl/nerfleet-*.whl; else pip_in .whl/*.whl; fi
if [ -d .corpus ] && [ ! -d /tmp/corpus ]; then
  mkdir -p /tmp/corpus
  for f in .corpus/*; do case $f in *.tar.xz) tar -C /tmp/corpus -xJf "$f" ;; *) cp -r "$f" /tmp/corpus/ ;; esac; done
fi
rm -rf /tmp/bench && cp -r bench /tmp/bench
cd /tmp && PYTHONPATH=/tmp/site python3 -c "import nerfleet.workers.continuous, celery, seqeval, torch, transformers, importlib.util as u; print('ready: torch', torch.__version__, 'transformers', transformers.__version__, 'xgrammar', bool(u.find_spec('xgrammar')))"
