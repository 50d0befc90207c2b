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
