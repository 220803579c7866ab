# The saga orchestrator's developer commands. `make up` runs the whole system; `make test` runs what CI runs.
# Everything the stack downloads, builds and stores lives under $(SAGA_STATE_DIR) (default .local/).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export SAGA_STATE_DIR ?= $(CURDIR)/.local

.DEFAULT_GOAL := help
.PHONY: help up down clean test infra-up infra-down status logs seed build topics

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

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

build: ## Build the services (release)
	cargo build --release --workspace --bins --locked

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
