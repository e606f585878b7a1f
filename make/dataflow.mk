# Dataflow: build the image and the Flex Template, launch the streaming job and backfills, and
# check the Terraform offline. Included by the Makefile; docs/DEPLOY.md walks through it.
#
#   make dataflow-env            read the Terraform outputs into build/dataflow.env (once per apply)
#   make image                   build and push the launcher+worker image with Cloud Build
#   make template                write the Flex Template spec to gs://BUCKET/templates/
#   make launch                  start the streaming job (subscription -> BigQuery)
#   make launch UPDATE=1         replace the running job in place (same JOB_NAME, state kept)
#   make launch-batch INPUT_FILES='gs://b/events/*.jsonl'   backfill or replay files
#   make lock                    regenerate templates/requirements.lock from pyproject.toml
#   make template-metadata       regenerate templates/metadata.json from pipeline/options.py
#   make tf-tools                install checkov (.tools/checkov), check terraform
#   make tf-check                terraform fmt -check and checkov, offline
#
# Variables (set on the command line, in the environment, or in build/dataflow.env, which
# `make dataflow-env` writes from `terraform output -raw make_env`; the command line wins):
#
#   PROJECT             (required) Google Cloud project ID
#   REGION              (required) Dataflow region, e.g. europe-west1
#   NAME_PREFIX         effectively-once: Terraform's name_prefix, from which the names below derive
#   BUCKET              $(PROJECT)-$(NAME_PREFIX): temp/, staging/ and templates/
#   AR_REPOSITORY       $(NAME_PREFIX): Artifact Registry repository in $(REGION)
#   IMAGE_NAME          pipeline
#   IMAGE_TAG           `git describe --always --dirty` (e.g. f55082e, f55082e-dirty): one tag per
#                       source state; pass an older tag to relaunch an older version
#   IMAGE               $(REGION)-docker.pkg.dev/$(PROJECT)/$(AR_REPOSITORY)/$(IMAGE_NAME):$(IMAGE_TAG)
#   TEMPLATE_PATH       gs://$(BUCKET)/templates/$(NAME_PREFIX)-$(IMAGE_TAG).json
#   SERVICE_ACCOUNT     $(NAME_PREFIX)-worker@$(PROJECT).iam.gserviceaccount.com
#   SUBSCRIPTION        projects/$(PROJECT)/subscriptions/$(NAME_PREFIX)-events-dataflow
#   DATASET             effectively_once: --warehouse=bigquery:$(PROJECT).$(DATASET)
#   STAGING_DATASET     effectively_once_staging: --bigquery_staging_dataset=$(PROJECT).$(STAGING_DATASET)
#   BIGQUERY_LOCATION   (empty: the datasets' own) --bigquery_location, where the datasets must be
#   JOB_NAME            $(NAME_PREFIX)-streaming: the streaming job (the alerts match $(NAME_PREFIX)-*)
#   STREAMING_MODE      at_least_once (default: every tier is idempotent, so Dataflow's cheaper,
#                       lower-latency mode is safe) or exactly_once
#   INPUT_FILES         (required by launch-batch) gs:// glob of newline-delimited JSON files
#   BATCH_JOB_NAME      $(NAME_PREFIX)-backfill-<UTC time>
#   MAX_WORKERS         5
#   NUM_WORKERS         (Dataflow's choice) initial number of workers
#   WORKER_MACHINE_TYPE (Dataflow's choice) e.g. n2-standard-2
#   SUBNETWORK          (the default network) regions/REGION/subnetworks/NAME or a full URL
#   DISABLE_PUBLIC_IPS  (empty) 1: workers without public IPs (needs Private Google Access)
#   PARAMETERS          (empty) more template parameters, space-separated name=value, e.g.
#                       PARAMETERS='window_size_seconds=300 log_level=INFO'
#   UPDATE              (empty) 1: launch with --update, replacing the running job of JOB_NAME
#   TRANSFORM_NAME_MAPPINGS  (empty) old=new,... with UPDATE=1 after renaming a step
#   LABELS              app=effectively-once: job labels, key=value,...
#   GCLOUD              gcloud
#   TERRAFORM           terraform
#   DATAFLOW_ENV        build/dataflow.env
#   IMAGE_CONTEXT       build/image-context: what `make image` uploads to Cloud Build
#   PY                  .venv/bin/python (the Makefile's, when included)
#   CHECKOV             .tools/checkov/bin/checkov (installed by make tf-tools)

DATAFLOW_ENV ?= build/dataflow.env
-include $(DATAFLOW_ENV)

PROJECT ?=
REGION ?=
NAME_PREFIX ?= effectively-once
BUCKET ?= $(PROJECT)-$(NAME_PREFIX)
AR_REPOSITORY ?= $(NAME_PREFIX)
IMAGE_NAME ?= pipeline
ifeq ($(origin IMAGE_TAG),undefined)
IMAGE_TAG := $(shell git describe --always --dirty 2>/dev/null || date -u +%Y%m%d%H%M%S)
endif
IMAGE ?= $(REGION)-docker.pkg.dev/$(PROJECT)/$(AR_REPOSITORY)/$(IMAGE_NAME):$(IMAGE_TAG)
TEMPLATE_PATH ?= gs://$(BUCKET)/templates/$(NAME_PREFIX)-$(IMAGE_TAG).json
SERVICE_ACCOUNT ?= $(NAME_PREFIX)-worker@$(PROJECT).iam.gserviceaccount.com
SUBSCRIPTION ?= projects/$(PROJECT)/subscriptions/$(NAME_PREFIX)-events-dataflow
DATASET ?= effectively_once
STAGING_DATASET ?= effectively_once_staging
BIGQUERY_LOCATION ?=
JOB_NAME ?= $(NAME_PREFIX)-streaming
STREAMING_MODE ?= at_least_once
INPUT_FILES ?=
ifeq ($(origin BATCH_JOB_NAME),undefined)
BATCH_JOB_NAME := $(NAME_PREFIX)-backfill-$(shell date -u +%Y%m%d-%H%M%S)
endif
MAX_WORKERS ?= 5
NUM_WORKERS ?=
WORKER_MACHINE_TYPE ?=
SUBNETWORK ?=
DISABLE_PUBLIC_IPS ?=
PARAMETERS ?=
UPDATE ?=
TRANSFORM_NAME_MAPPINGS ?=
LABELS ?= app=effectively-once
GCLOUD ?= gcloud
TERRAFORM ?= terraform
IMAGE_CONTEXT ?= build/image-context
PY ?= .venv/bin/python
CHECKOV ?= .tools/checkov/bin/checkov

# Dataflow's streaming modes, as the launch flags that select them. Streaming Engine is on in
# both (at-least-once mode requires it).
STREAMING_MODE_FLAGS_at_least_once := --enable-streaming-engine \
	--additional-experiments=streaming_mode_at_least_once
STREAMING_MODE_FLAGS_exactly_once := --enable-streaming-engine
STREAMING_MODE_FLAGS = $(or $(STREAMING_MODE_FLAGS_$(STREAMING_MODE)),$(error \
	STREAMING_MODE must be at_least_once or exactly_once, not '$(STREAMING_MODE)'))

# $(call require,VAR): stop with a message unless VAR is set (checked when a recipe runs).
require = $(if $(strip $($(1))),,$(error $(1) is required: make $@ $(1)=... (see make/dataflow.mk)))

# The job's environment and the parameters every launch passes: the image the template was
# built from runs the workers too, as the worker service account, with the stack's warehouse.
DATAFLOW_RUN_FLAGS = --project='$(PROJECT)' --region='$(REGION)' \
	--template-file-gcs-location='$(TEMPLATE_PATH)' \
	--service-account-email='$(SERVICE_ACCOUNT)' \
	--staging-location='gs://$(BUCKET)/staging' --temp-location='gs://$(BUCKET)/temp' \
	--max-workers='$(MAX_WORKERS)' \
	$(if $(NUM_WORKERS),--num-workers='$(NUM_WORKERS)') \
	$(if $(WORKER_MACHINE_TYPE),--worker-machine-type='$(WORKER_MACHINE_TYPE)') \
	$(if $(SUBNETWORK),--subnetwork='$(SUBNETWORK)') \
	$(if $(DISABLE_PUBLIC_IPS),--disable-public-ips) \
	--additional-user-labels='$(LABELS)' \
	--parameters='sdk_container_image=$(IMAGE)' \
	--parameters='warehouse=bigquery:$(PROJECT).$(DATASET)' \
	--parameters='bigquery_staging_dataset=$(PROJECT).$(STAGING_DATASET)' \
	$(if $(BIGQUERY_LOCATION),--parameters='bigquery_location=$(BIGQUERY_LOCATION)') \
	$(foreach parameter,$(PARAMETERS),--parameters='$(parameter)')

.PHONY: dataflow-help dataflow-env image template launch launch-batch lock template-metadata \
	tf-tools tf-check

dataflow-help:
	@sed -n '3,14p' make/dataflow.mk | sed 's/^# *//'

dataflow-env:
	@mkdir -p $(dir $(DATAFLOW_ENV))
	$(TERRAFORM) -chdir=terraform output -raw make_env > $(DATAFLOW_ENV).tmp
	mv $(DATAFLOW_ENV).tmp $(DATAFLOW_ENV)
	@cat $(DATAFLOW_ENV)

# Cloud Build receives only what the image needs (no .venv, build outputs or caches), laid out as
# in the repository, with the Dockerfile at the root of the upload.
image:
	$(call require,PROJECT)$(call require,REGION)
	rm -rf '$(IMAGE_CONTEXT)' && mkdir -p '$(IMAGE_CONTEXT)'
	tar --exclude='__pycache__' -cf - pyproject.toml README.md pipeline \
		templates/requirements.lock templates/main.py | tar -xf - -C '$(IMAGE_CONTEXT)'
	cp templates/Dockerfile '$(IMAGE_CONTEXT)/Dockerfile'
	$(GCLOUD) builds submit '$(IMAGE_CONTEXT)' --project='$(PROJECT)' --tag='$(IMAGE)'

template:
	$(call require,PROJECT)$(call require,REGION)
	$(PY) -m pipeline.tools.template_metadata --check
	$(GCLOUD) dataflow flex-template build '$(TEMPLATE_PATH)' --project='$(PROJECT)' \
		--image='$(IMAGE)' --sdk-language=PYTHON --metadata-file=templates/metadata.json
	@echo "Template: $(TEMPLATE_PATH)"
	@echo "Image:    $(IMAGE)"

# --update replaces the running job of JOB_NAME: Dataflow maps its state (the dedup state, the
# sink's batches) to the new graph by step name, which tests/test_labels.py pins.
UPDATE_FLAGS = $(if $(UPDATE),--update) \
	$(if $(TRANSFORM_NAME_MAPPINGS),--transform-name-mappings='$(TRANSFORM_NAME_MAPPINGS)')

launch:
	$(call require,PROJECT)$(call require,REGION)
	$(GCLOUD) dataflow flex-template run '$(JOB_NAME)' $(DATAFLOW_RUN_FLAGS) \
		$(STREAMING_MODE_FLAGS) $(UPDATE_FLAGS) \
		--parameters='input_subscription=$(SUBSCRIPTION)'

# A bounded job over files: the same template and tables; what already landed changes nothing.
launch-batch:
	$(call require,PROJECT)$(call require,REGION)$(call require,INPUT_FILES)
	$(GCLOUD) dataflow flex-template run '$(BATCH_JOB_NAME)' $(DATAFLOW_RUN_FLAGS) \
		--parameters='input_files=$(INPUT_FILES)'

lock:
	scripts/dataflow/lock_requirements.sh

template-metadata:
	$(PY) -m pipeline.tools.template_metadata

tf-tools:
	scripts/dataflow/install_tools.sh

tf-check: tf-tools
	$(TERRAFORM) fmt -check -recursive -diff terraform
	$(CHECKOV) --directory terraform --framework terraform --quiet --compact --skip-download
