# Container images (docker/README.md), included by the Makefile. docker/images.sh does the work
# with docker or podman; caches live outside the checkout (~/.cache/tuneforge/images, ~/.cache/pip).
IMAGE_ROLES     ?= datasets ml s3 postgres
IMAGES_SH       := docker/images.sh

.PHONY: images image-base images-save images-sizes image-ml-cuda

images:  ## build every image built here (datasets, ml, s3, postgres) with docker or podman
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
E2E_IMAGES      = $(foreach r,$(IMAGE_ROLES),$(shell $(IMAGES_SH) ref $(r)))

.PHONY: e2e-prepare images-load-cluster kind-test

# Builds the images (a warm build takes seconds) and, for the local cluster, loads them into its
# containerd; a kind cluster gets them from `deploy/kind/up.sh`.
e2e-prepare: images
	@if [ "$(E2E_KUBECONFIG)" = "$(ROOT)/.run/cluster/kubeconfig" ]; then $(MAKE) --no-print-directory images-load-cluster; fi

images-load-cluster:  ## load the built images into the local cluster's containerd (make cluster-up)
	deploy/cluster/load-image.sh $(E2E_IMAGES)

kind-test:  ## the same e2e tests on kind (laptops with Docker/Podman): cluster, KubeRay, images, tests
	deploy/kind/up.sh
	TUNEFORGE_E2E_KUBECONFIG=$(ROOT)/.run/kind/kubeconfig $(PY) -m pytest tests/e2e -m e2e -q -rs -s $(PYTEST_ARGS)
