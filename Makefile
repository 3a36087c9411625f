# Quick start: `make demo` (segment the bundled sample MRI) and `make test` (the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo
SAMPLE := SRMASegmenter/Resources/SampleData/chaos_case20_t2.nii.gz
REFERENCE := SRMASegmenter/Resources/SampleData/chaos_case20_labels.nii.gz
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build on machines without a GPU
TORCH ?= torch==2.13.0

.PHONY: venv install install-test demo test test-kernels bench-cpu clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e kernels -e ".[slicer-core]"

install-test: install
	$(BIN)/python -m pip install -q -e ".[test,train]"

demo: install
	$(BIN)/srma-segment $(SAMPLE) -o $(OUT)/chaos_case20_liver.nii.gz -o $(OUT)/chaos_case20_liver.seg.nrrd --reference $(REFERENCE)
	@$(BIN)/python -c "import json; r = json.load(open('$(OUT)/chaos_case20_liver.json')); \
	print(f\"\nLiver volume: {r['liver_volume_ml']:.0f} mL ({r['seconds']:.0f} s on {r['device']}, weights {r['weights']}); Dice vs the CHAOS reference {r['metrics']['dice']:.3f}\"); \
	print('Outputs: $(OUT)/chaos_case20_liver.nii.gz (labelmap), $(OUT)/chaos_case20_liver.seg.nrrd (Slicer segmentation), $(OUT)/*.json (reports)')"
	@echo ""
	@echo "Breast ultrasound (default model: ImageNet EfficientNet-Lite0, two seeds averaged, cross-validated accuracy 0.865 and malignant recall 0.85 on folds that keep near-duplicate images together; calibrated probabilities; decision support, not a diagnosis):"
	$(BIN)/ultrascan-classify UltraScanClassifier/Resources/SampleData --heatmap-dir $(OUT)/heatmaps
	@echo ""
	@echo "The same with the second shipped model (UltraScanNet as published; cross-validated accuracy 0.71):"
	$(BIN)/ultrascan-classify UltraScanClassifier/Resources/SampleData --model ultrascannet_busi --heatmap-dir $(OUT)/heatmaps_ultrascannet

# The two suites run side by side: on a 2-core machine like CI's, `make test` on a clean clone took 905-950 s
# (the application tests 881-922 s, the kernel suite 560-584 s beside them) where the suites one after the
# other had taken 624 + 417 s (session 30). The kernel suite, single-threaded, writes its log to out/test-kernels.log,
# printed when both are done.
test: install-test
	@mkdir -p out
	@echo "kernels/tests (Triton interpreter) in the background, log: out/test-kernels.log"
	@cd kernels && OMP_NUM_THREADS=1 TRITON_INTERPRET=1 ../$(BIN)/python -m pytest -q tests -p no:cacheprovider \
		> ../out/test-kernels.log 2>&1 & kpid=$$!; \
	(cd Testing && ../$(BIN)/python -m pytest -q . -p no:cacheprovider); trc=$$?; \
	wait $$kpid; krc=$$?; \
	echo "--- kernels/tests (exit $$krc) ---"; cat out/test-kernels.log; \
	echo "--- Testing exit $$trc, kernels/tests exit $$krc ---"; \
	test $$trc -eq 0 && test $$krc -eq 0

test-kernels: install-test
	cd kernels && TRITON_INTERPRET=1 ../$(BIN)/python -m pytest -q tests -p no:cacheprovider

bench-cpu: install
	$(BIN)/python kernels/benchmarks/bench_scan.py --cpu
	$(BIN)/python benchmarks/bench_srma.py --cpu --threads 2 --reps 1
	$(BIN)/python benchmarks/bench_ultrascan.py --cpu --threads 2 --reps 3

clean:
	rm -rf $(VENV) out
