"""Validates the manifests of deploy/k8s offline against the Kubernetes schemas
(kubernetes-validate, strict: an unknown field fails), checks that the kustomization
lists every object file, and that the stop's timings fit: the Deployment's
terminationGracePeriodSeconds covers SWITCHYARD_STOP_DELAY_MS and
SWITCHYARD_SHUTDOWN_GRACE_MS with time to spare, so SIGKILL never comes first.
Usage: manifests.py DEPLOY_K8S_FOLDER"""
import os
import subprocess
import sys

import yaml

folder = sys.argv[1]
with open(os.path.join(folder, "kustomization.yaml")) as f:
    kustomization = yaml.safe_load(f)
objects = sorted(kustomization["resources"])
on_disk = sorted(n for n in os.listdir(folder)
                 if n.endswith(".yaml") and n not in ("kustomization.yaml", "prometheus-scrape.yaml"))
assert objects == on_disk, "kustomization resources %s, files %s" % (objects, on_disk)
paths = [os.path.join(folder, n) for n in objects]
for version in ("1.30.0", "1.34.0"):
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "kubernetes-validate"),
                    "--strict", "--kubernetes-version", version] + paths, check=True)

docs = {}
for path in paths:
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            docs[doc["kind"]] = doc
settings = docs["ConfigMap"]["data"]
pod = docs["Deployment"]["spec"]["template"]["spec"]
delay = int(settings["SWITCHYARD_STOP_DELAY_MS"]) / 1000
grace = int(settings["SWITCHYARD_SHUTDOWN_GRACE_MS"]) / 1000
assert pod["terminationGracePeriodSeconds"] >= delay + grace + 10, (
    "terminationGracePeriodSeconds %s < stop delay %s + grace %s + 10"
    % (pod["terminationGracePeriodSeconds"], delay, grace))
container = pod["containers"][0]
assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
security = container["securityContext"]
assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
assert security["capabilities"]["drop"] == ["ALL"]
assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
strategy = docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]
assert strategy["maxUnavailable"] == 0, "a rollout must not drop below the replicas"
with open(os.path.join(folder, "prometheus-scrape.yaml")) as f:
    scrape = yaml.safe_load(f)["scrape_configs"][0]
assert scrape["kubernetes_sd_configs"][0]["role"] == "pod"
print("manifests: %d objects valid for Kubernetes 1.30 and 1.34; stop delay %gs + grace %gs "
      "within terminationGracePeriodSeconds %ds" % (len(paths), delay, grace,
                                                    pod["terminationGracePeriodSeconds"]))
