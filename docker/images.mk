# Container images (docker/README.md), included by the Makefile. docker/images.sh does the work
# with docker or podman; caches live outside the checkout (~/.cache/tuneforge/images, ~/.cache/pip).
IMAGE_ROLES     ?= datasets ml gate s3 postgres
IMAGES_SH       := docker/images.sh
APP_VERSION     := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' helm/tuneforge/Chart.yaml)

.PHONY: images image-base images-save images-sizes image-ml-cuda

images:  ## build every image built here (datasets, ml, gate, s3, postgres) with docker or podman
	$(IMAGES_SH) build $(IMAGE_ROLES)
	@$(IMAGES_SH) sizes

image-base:  ## bootstrap the Debian base image (mmdebstrap, cached) and import it
	$(IMAGES_SH) base

image-ml-cuda:  ## the ML image on the CUDA base, for GPU clusters (needs registry access for the base)
	$(IMAGES_SH) build ml-cuda

images-save:  ## write the built images as docker-archive tars (for `ctr images import` / kind load)
	$(IMAGES_SH) save $(IMAGE_ROLES)

images-sizes:  ## print the size of each built image
	@$(IMAGES_SH) sizes

# ---- images for the e2e tests (tests/e2e, marker e2e) -------------------------------------------
# The cluster comes as a kubeconfig: `make cluster-up` writes .run/cluster/kubeconfig (this machine's
# one-node Kubernetes); `make kind-test` uses kind's (.run/kind/kubeconfig).
E2E_KUBECONFIG ?= $(or $(TUNEFORGE_E2E_KUBECONFIG),$(ROOT)/.run/cluster/kubeconfig)
E2E_TAG_FILE    := $(ROOT)/.run/e2e-image-tag

.PHONY: e2e-prepare e2e-images images-load-cluster images-prune cluster-prune-images kind-test

# The e2e images by content (docker/images.sh cached): reused when their inputs are unchanged, a thin
# refresh over the newest full build after source or lock changes, a full build only on a machine
# without one. Tagged <appVersion>-<content hash>, written to .run/e2e-image-tag for the tests. For
# the local cluster, only images containerd lacks are loaded, and only their missing layers.
# E2E_PRUNE=1 (the default) then drops the stale tuneforge images, in the image store and, once the
# current ones are loaded (their layers shared with the stale ones stay), in the local cluster's
# containerd (an ml image is ~8 GB, twice over there): each content change makes a new tag, and a
# machine running the e2e on every change would otherwise fill its disk.
E2E_PRUNE ?= 1
e2e-prepare: e2e-images
	@if [ "$(E2E_PRUNE)" = 1 ]; then $(IMAGES_SH) prune; fi
	@if [ "$(E2E_KUBECONFIG)" = "$(ROOT)/.run/cluster/kubeconfig" ]; then \
	  $(MAKE) --no-print-directory images-load-cluster && \
	  if [ "$(E2E_PRUNE)" = 1 ]; then $(MAKE) --no-print-directory cluster-prune-images; fi; fi

e2e-images:  ## the e2e images by content hash (reuse, thin refresh, or build); tag in .run/e2e-image-tag
	$(IMAGES_SH) cached $(IMAGE_ROLES)
	@mkdir -p $(dir $(E2E_TAG_FILE)) && $(IMAGES_SH) tag > $(E2E_TAG_FILE) && echo "e2e image tag: $$(cat $(E2E_TAG_FILE))"

images-load-cluster:  ## load the e2e images into the local cluster's containerd (make cluster-up), missing ones only
	@tag=$$(cat $(E2E_TAG_FILE)) && deploy/cluster/load-image.sh $(foreach r,$(IMAGE_ROLES),localhost/tuneforge-$(r):$$tag)

images-prune:  ## remove tuneforge images other than the current ones (the newest full build per role stays)
	$(IMAGES_SH) prune

cluster-prune-images:  ## remove tuneforge images other than the current e2e ones (and :<appVersion>) from the local cluster's containerd
	@tag=$$(cat $(E2E_TAG_FILE) 2>/dev/null || $(IMAGES_SH) tag) && \
	  deploy/cluster/prune-images.sh $(foreach r,$(IMAGE_ROLES),localhost/tuneforge-$(r):$$tag localhost/tuneforge-$(r):$(APP_VERSION))

kind-test:  ## the same e2e tests on kind (laptops with Docker/Podman): cluster, KubeRay, images, tests
	deploy/kind/up.sh
	TUNEFORGE_E2E_KUBECONFIG=$(ROOT)/.run/kind/kubeconfig $(PY) -m pytest tests/e2e -m e2e -q -rs -s $(PYTEST_ARGS)
