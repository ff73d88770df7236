"""Bad values fail `helm template` (Helm 3 and Helm 4) before anything reaches a
cluster, with a message that names the offending value."""

from __future__ import annotations

import re

import pytest

from chartlib import CHART, NAMESPACE, RELEASE, run_helm

BAD = {
    # unknown key (additionalProperties: false), at the top and nested
    "unknown-top-key": (["--set", "replicas=3"], r"(?i)additional propert.*replicas.*not allowed"),
    "unknown-nested-key": (["--set", "autoscaling.scaleMetric=cpu"],
                           r"(?i)additional propert.*scaleMetric.*not allowed"),
    "typo-in-monitoring": (["--set", "monitoring.serviceMonitors.enabled=true"],
                           r"(?i)additional propert.*serviceMonitors.*not allowed"),
    # wrong types
    "max-replicas-string": (["--set", "autoscaling.maxReplicas=many"],
                            r"(?i)autoscaling.maxReplicas.*(expected: integer|want integer)"),
    "enabled-string": (["--set-string", "networkPolicy.enabled=yes"],
                       r"(?i)networkPolicy.enabled.*(expected: boolean|want boolean)"),
    "resources-list": (["--set-json", "resources=[1]"], r"(?i)resources.*(expected: object|want object)"),
    # enums
    "legacy-deployment-mode": (["--set", "deploymentMode=RawDeployment"],
                               r"(?i)deploymentMode.*(must be one of|value must be one of).*Standard.*Knative"),
    "bad-workload": (["--set", "workload=statefulset"], r"(?i)workload.*one of.*inferenceService.*deployment"),
    # unsupported autoscaling combinations
    "rps-with-hpa": (["--set", "autoscaling.metric=rps"],
                     r"(?i)autoscaling.metric.*one of.*cpu.*memory"),
    "concurrency-with-hpa": (["--set", "autoscaling.metric=concurrency", "--set", "autoscaling.target=10"],
                             r"(?i)autoscaling.metric.*one of.*cpu.*memory"),
    "knative-autoscaler-in-standard": (["--set", "autoscaling.class=kpa", "--set", "autoscaling.metric=rps"],
                                       r"(?i)autoscaling.class.*one of.*hpa.*keda.*external"),
    "hpa-in-knative": (["--set", "deploymentMode=Knative", "--set", "autoscaling.class=hpa"],
                       r"(?i)autoscaling.class.*(one of.*kpa|must be 'kpa')"),
    "cpu-in-knative": (["--set", "deploymentMode=Knative", "--set", "autoscaling.class=kpa",
                        "--set", "autoscaling.metric=cpu"],
                       r"(?i)autoscaling.metric.*one of.*concurrency.*rps"),
    "keda-with-plain-deployment": (["--set", "workload=deployment", "--set", "autoscaling.class=keda"],
                                   r"(?i)autoscaling.class.*(one of.*hpa|must be 'hpa')"),
    "rps-with-plain-deployment": (["--set", "workload=deployment", "--set", "autoscaling.metric=rps"],
                                  r"(?i)autoscaling.metric.*one of.*cpu.*memory"),
    "scale-to-zero-in-standard": (["--set", "autoscaling.minReplicas=0"],
                                  r"(?i)autoscaling.minReplicas.*(greater than or equal to 1|minimum: got 0, want 1)"),
    "cpu-target-over-100": (["--set", "autoscaling.target=150"],
                            r"(?i)autoscaling.target.*(less than or equal to 100|maximum: got 150, want 100)"),
    "min-above-max": (["--set", "autoscaling.minReplicas=5", "--set", "autoscaling.maxReplicas=2"],
                      r"autoscaling.minReplicas \(5\) must not exceed autoscaling.maxReplicas \(2\)"),
    # other combinations
    "both-monitors": (["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true"],
                      r"serviceMonitor.enabled and monitoring.podMonitor.enabled are both true"),
    "servicemonitor-in-knative": (["--set", "deploymentMode=Knative", "--set", "autoscaling.class=kpa",
                                   "--set", "autoscaling.metric=concurrency",
                                   "--set", "monitoring.serviceMonitor.enabled=true"],
                                  r"serviceMonitor is not supported with deploymentMode=Knative"),
    "storage-uri-without-kserve": (["--set", "workload=deployment", "--set", "model.storageUri=s3://b/m"],
                                   r"model.storageUri needs KServe's storage initializer"),
    "storage-uri-bad-scheme": (["--set", "model.storageUri=ftp://host/model"], r"(?i)model.storageUri"),
    # authentication (docs/security.md)
    "repository-api-without-auth": (["--set", "server.repositoryApi=true"],
                                    r"server.repositoryApi lets any caller unload the model: it needs auth.enabled"),
    "auth-without-tokens": (["--set", "auth.enabled=true"], r"auth.enabled needs the tokens"),
    "auth-short-token": (["--set", "auth.enabled=true", "--set", "auth.tokens[0]=short"], r"(?i)auth.tokens"),
    "closed-metrics-with-monitor": (["--set", "auth.enabled=true", "--set", "auth.existingSecret=s",
                                     "--set", "auth.openMetrics=false", "--set", "monitoring.podMonitor.enabled=true"],
                                    r"auth.openMetrics=false: the ServiceMonitor/PodMonitor scrape carries no token"),
    "digest-not-sha256": (["--set", "model.digest=md5:abc"], r"(?i)model.digest"),
    # KServe older than 0.15 is not supported (the deployment-mode names and autoscaling fields differ)
    "kserve-014": (["--set", "kserveVersion=0.14"], r"(?i)kserveVersion"),
    # pod fields Knative's webhook refuses with its default feature flags
    "knative-node-selector": (["--set", "deploymentMode=Knative", "--set", "autoscaling.class=kpa",
                               "--set", "autoscaling.metric=rps", "--set", "nodeSelector.disk=ssd"],
                              r"nodeSelector is set but deploymentMode=Knative: .*kubernetes.podspec-nodeselector"),
    "knative-priority-class": (["--set", "deploymentMode=Knative", "--set", "autoscaling.class=kpa",
                                "--set", "autoscaling.metric=rps", "--set", "priorityClassName=high"],
                               r"priorityClassName is set but deploymentMode=Knative"),
    "knative-nfs-volume": (["--set", "deploymentMode=Knative", "--set", "autoscaling.class=kpa",
                                 "--set", "autoscaling.metric=rps",
                                 "--set-json", 'extraVolumes=[{"name":"data","nfs":{"server":"s","path":"/"}}]'],
                                r"extraVolumes\[data\]: Knative accepts only emptyDir"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_fail_readably(helm, case):
    args, pattern = BAD[case]
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode != 0, f"{case}: helm template accepted bad values"
    message = proc.stderr
    assert re.search(pattern, message, re.S), f"{case}: unhelpful message:\n{message}"
    assert "panic" not in message and "nil pointer" not in message, message
