#!/usr/bin/env bash
# For the lent GPU machine: python3 there has torch (CUDA) + transformers; onnxruntime-gpu comes as a wheel
# split into .whl*/ort.part* (and, optionally, the OpenVINO plugin EP as .whl*/ov.part*), parts small enough
# for the per-call transfer limit. Runs the GPU tests (CUDA really in effect, CPU/CUDA agreement, fp32 and
# fp16 validated on CUDA at export), then the unified harness (`python -m bench`) on the ViT-B/32
# architecture with random weights: PyTorch eager on CPU and CUDA, ONNX Runtime on CPU, CUDA (with and
# without IO binding), TensorRT and OpenVINO where each can run, every precision. Results go to $OUT.
# `bash bench/gpu_check.sh tests` runs the tests only; `bash bench/gpu_check.sh peers` (at most 8 minutes)
# runs bench.gpu_peers: CUDA fp16 with IO binding against PyTorch fp16 eager and torch.compile, batch 1/32/256. Render the docs section here afterwards with
# `python -m bench.report RUN/report.json --doc docs/benchmarks.md --section gpu`.
set -uo pipefail
OUT=${OUT:-/tmp/clipedge-gpu}
mkdir -p "$OUT" /tmp/site
cat .whl*/ort.part* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/onnxruntime_gpu-*.whl || exit 1
if ls .whl*/ov.part* >/dev/null 2>&1; then
  cat .whl*/ov.part* > /tmp/onnxruntime_ep_openvino-1.8.1-py3-none-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/onnxruntime_ep_openvino-*.whl
fi
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/site:$PWD/runtime:$PWD/export:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import onnxruntime as o, torch, transformers; print('ort', o.__version__, o.get_available_providers(), 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${1:-all}" = peers ]; then  # at most 8 minutes: build the ViT-B/32 bundle, then bench.gpu_peers only
  timeout 200 python3 -c "from pathlib import Path; from bench.__main__ import build_vitb32; build_vitb32(Path('/tmp/bench-cache'), print)"
  timeout 270 python3 -m bench.gpu_peers --bundle /tmp/bench-cache/vitb32-bundle --checkpoint /tmp/bench-cache/vitb32-checkpoint \
    --seconds 220 --json "$OUT/gpu-peers.json" 2>&1 | tail -40
  exit 0
fi
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_export.py tests/test_classifier.py -x 2>&1 | tail -15 | tee "$OUT/pytest.txt"
[ "${1:-all}" = tests ] && exit 0
lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-400 | tee -a "$OUT/gpu.txt"
timeout 500 python3 -m bench --vitb32 --providers cpu,cuda,tensorrt,openvino --threads "$(nproc)" \
  --iters 20 --min-seconds 1 --no-fidelity --cache /tmp/bench-cache --out "$OUT/gpu-run" 2>&1 |
  grep -v Warning | tail -60
