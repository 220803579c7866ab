# The saga orchestrator's developer commands. `make up` runs the whole system; `make test` runs what CI runs.
# Everything the stack downloads, builds and stores lives under $(SAGA_STATE_DIR) (default .local/).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export SAGA_STATE_DIR ?= $(CURDIR)/.local

.DEFAULT_GOAL := help
.PHONY: help up down clean test chaos infra-up infra-down status logs seed build topics prometheus-up prometheus-down \
	compose-up compose-down bench sim

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

up: infra-up build ## Install what is missing, start Kafka, the database and the services; print where they listen
	@ops/services.sh start
	@ops/services.sh endpoints

down: ## Stop everything `make up` started (data are kept)
	@ops/services.sh stop
	@ops/infra.sh down

clean: down ## Stop everything and wipe local data (downloads and builds of Kafka and FerretDB are kept)
	rm -rf "$(SAGA_STATE_DIR)/kafka/data" "$(SAGA_STATE_DIR)/ferretdb/data" "$(SAGA_STATE_DIR)/ferretdb/state" "$(SAGA_STATE_DIR)/services"

test: ## Run every test suite CI runs; starts the infrastructure it needs and stops what it started
	@ops/test.sh

chaos: infra-up ## Only the chaos suite (faults under load; restarts the shared Kafka and database), one test at a time
	cargo build --workspace --bins --locked
	cargo test -p tests --locked --test chaos -- --test-threads=1 --nocapture

build: ## Build the services, saga-topics and sagactl (release); `make sim` and `make bench` build their own tools
	cargo build --release --locked -p platform -p orchestrator -p participants --bins

infra-up: ## Start Kafka and the database (reusing what runs) and create the topics
	@ops/infra.sh up

infra-down: ## Stop Kafka and the database (data are kept)
	@ops/infra.sh down

topics: ## Create missing Kafka topics (idempotent)
	@ops/infra.sh topics

status: ## Say what runs
	@ops/infra.sh status
	@ops/services.sh status

logs: ## Show the last lines of every log (FOLLOW=1 to follow them)
	@ops/logs.sh

seed: ## Load demo stock: SKU-1 ... SKU-20 with 1,000 units each (needs `make up`)
	@ops/seed.sh

sim: ## A longer deterministic-simulation campaign: SEEDS seeds (default 10000) of 100 sagas; SIM_ARGS e.g. --sagas 300, --seed 42 --trace
	cargo run --release --locked -p simulator --bin sim -- $(if $(filter --seed,$(SIM_ARGS)),,--seeds $(or $(SEEDS),10000)) $(SIM_ARGS)

bench: ## Benchmark the running stack (needs `make up`; about 6 min; flags in BENCH_ARGS, e.g. BENCH_ARGS=--smoke); results in bench/results/
	@curl -fsS -o /dev/null --max-time 5 "http://127.0.0.1:$${ORCHESTRATOR_PORT:-8080}/ready" 2>/dev/null \
	  || { echo "error: no ready orchestrator on 127.0.0.1:$${ORCHESTRATOR_PORT:-8080}; start the stack with 'make up' first (make bench measures a running stack)" >&2; exit 1; }
	cargo run --release --locked -p bench --bin saga-bench -- $(BENCH_ARGS)

prometheus-up: ## Start Prometheus (Debian package, installed if missing) on 127.0.0.1:9090, scraping `make up`'s services
	@ops/prometheus/prometheus.sh start

prometheus-down: ## Stop that Prometheus (its data are kept)
	@ops/prometheus/prometheus.sh stop

# docker-compose.yml runs the whole system in containers; it needs a Docker engine (none on the CI machine).
define require_docker
	@command -v docker >/dev/null 2>&1 || { echo "error: docker not found: $@ needs Docker with the compose plugin; without Docker use 'make up'" >&2; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "error: 'docker compose' is not available: install Docker's compose plugin (docker-compose-plugin), or use 'make up'" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers ('docker info' failed): start the Docker daemon, or use 'make up', which needs none" >&2; exit 1; }
endef

compose-up: ## Build the image and start everything in Docker: Kafka, MongoDB, the services, Prometheus, Grafana, Jaeger
	$(require_docker)
	docker compose up -d --build
	@echo "orchestrator http://localhost:8080  Grafana http://localhost:3000  Prometheus http://localhost:9090  Jaeger http://localhost:16686  Kafka UI http://localhost:8090"

compose-down: ## Stop and remove the compose stack's containers (volumes are kept; `docker compose down -v` drops them)
	$(require_docker)
	docker compose down
