# make install   create .venv with the pinned OpenMMLab stack (first run ~12 min: builds mmcv)
# make demo      the main job: tiny detection + segmentation (+ classification) train/test
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
