# A real one-node Kubernetes on this machine (see deploy/README.md). Included from the Makefile.
# Binaries are built once per machine into ~/.cache/tuneforge/cluster; state and logs in .run/cluster.
CLUSTER_DIR := deploy/cluster
CLUSTER_KUBECONFIG := $(ROOT)/.run/cluster/kubeconfig

.PHONY: cluster-up cluster-down cluster-clean cluster-build cluster-smoke cluster-load cluster-status

cluster-build:  ## build/cache the local cluster's binaries only (kube, CoreDNS, KubeRay, helm, crictl)
	$(CLUSTER_DIR)/install-deps.sh
	$(CLUSTER_DIR)/build-kube.sh
	$(CLUSTER_DIR)/build-tools.sh

cluster-up:  ## start the local one-node Kubernetes + KubeRay (idempotent; KUBECONFIG=.run/cluster/kubeconfig)
	$(CLUSTER_DIR)/up.sh

cluster-down:  ## stop it and remove what it created on the host (loaded images are kept)
	$(CLUSTER_DIR)/down.sh

cluster-clean:  ## cluster-down, and forget loaded images too
	$(CLUSTER_DIR)/down.sh --purge

cluster-smoke:  ## prove the cluster: pod from a local image, Service by DNS, logs, exec, RayCluster
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(CLUSTER_DIR)/smoke.sh

cluster-load:  ## load images into the cluster: make cluster-load IMAGES="localhost/a:tag localhost/b:tag"
	$(CLUSTER_DIR)/load-image.sh $(IMAGES)

cluster-status:  ## what runs, and the node/pods
	@$(CLUSTER_DIR)/status.sh
