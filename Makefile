# make install   create .venv with the pinned OpenMMLab stack (first run builds mmcv: README "Install")
# make demo      the main job: tiny detection + segmentation train/test (python tools/demo.py cls: classification)
# make test      the full test suite
# make test-avx2 the CPU fast-path and device tests as an AVX2-only CPU runs them
# make test-torch21  the backbone, shift, classification and converter tests on torch 2.1.2
#                    (a venv of its own, cached in ~/.cache/asmlp_mm: tools/ci/torch21.sh)
PY := .venv/bin/python

.PHONY: install demo test test-avx2 test-torch21 clean
install:
	bash tools/install.sh

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q tests

# oneDNN and ATen limited to AVX2: what the fast path does on CPUs without AVX-512
# (e.g. AMD Zen 3), where oneDNN has no bfloat16 products
AVX2 := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
test-avx2: install
	$(AVX2) $(PY) -c "import torch; from asmlp_mm.fast.pointwise import onednn_runs as r; \
	print('oneDNN under the AVX2 limit runs:', {str(d)[6:] + (' packed' if p else ''): \
	r(d, p) for d in (torch.float32, torch.bfloat16) for p in (False, True)})"
	$(AVX2) $(PY) -m pytest -q tests/test_pointwise.py tests/test_fast_paths.py \
	tests/test_devices.py tests/test_benchmark.py

test-torch21:
	bash tools/ci/torch21.sh

clean:
	rm -rf work_dirs data/demo
