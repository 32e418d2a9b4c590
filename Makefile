# make install   create .venv with the pinned OpenMMLab stack (first run builds mmcv: README "Install")
# make demo      the main job: tiny detection + segmentation train/test (python tools/demo.py cls: classification)
# make test      the full test suite
PY := .venv/bin/python

.PHONY: install demo test clean
install:
	bash tools/install.sh

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf work_dirs data/demo
