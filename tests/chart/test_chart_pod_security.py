"""The Kubernetes "restricted" Pod Security Standard, checked on every rendered
pod spec (InferenceService predictor, Deployment template, helm test Pod).

The checks are written from the PSS definition
(https://kubernetes.io/docs/concepts/security/pod-security-standards/), baseline
plus restricted, and are shown to fail on deliberately bad values."""

from __future__ import annotations

import json

import pytest

from chartlib import CASES, pod_specs, render, render_case

BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret", "image"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(spec: dict) -> list[str]:
    """Violations of the baseline + restricted policies by one pod spec."""
    v: list[str] = []
    psc = spec.get("securityContext") or {}
    containers = [("container", c) for c in spec.get("containers", [])]
    containers += [("initContainer", c) for c in spec.get("initContainers", [])]
    containers += [("ephemeralContainer", c) for c in spec.get("ephemeralContainers", [])]
    if not spec.get("containers"):
        v.append("no containers")

    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            v.append(f"{field} is true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        v.append("pod windowsOptions.hostProcess")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            v.append(f"unsafe sysctl {sysctl.get('name')}")
    if (psc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
        v.append("pod seLinuxOptions.type")
    if (psc.get("seLinuxOptions") or {}).get("user") or (psc.get("seLinuxOptions") or {}).get("role"):
        v.append("pod seLinuxOptions user/role set")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        v.append("pod appArmorProfile Unconfined")
    for key, value in ((spec.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value == "unconfined":
            v.append(f"apparmor annotation {key} unconfined")

    # --- restricted: volumes ---
    for vol in spec.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if "hostPath" in kinds:
            v.append(f"volume {vol['name']}: hostPath")
        bad = kinds - RESTRICTED_VOLUME_TYPES
        if bad:
            v.append(f"volume {vol['name']}: type {sorted(bad)} not allowed")

    # --- restricted: pod-level seccomp / runAsNonRoot / runAsUser ---
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in ("RuntimeDefault", "Localhost"):
        v.append(f"pod seccompProfile {pod_seccomp}")
    if psc.get("runAsNonRoot") is False:
        v.append("pod runAsNonRoot is false")
    if psc.get("runAsUser") == 0:
        v.append("pod runAsUser is 0")

    for what, c in containers:
        name = f"{what} {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            v.append(f"{name}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            v.append(f"{name}: windowsOptions.hostProcess")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                v.append(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            v.append(f"{name}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("type", "") not in SELINUX_TYPES:
            v.append(f"{name}: seLinuxOptions.type")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            v.append(f"{name}: appArmorProfile Unconfined")
        caps = sc.get("capabilities") or {}
        for cap in caps.get("add") or []:
            if cap not in BASELINE_CAPS:
                v.append(f"{name}: capability {cap} added (baseline)")
            if cap != "NET_BIND_SERVICE":
                v.append(f"{name}: capability {cap} added (restricted allows only NET_BIND_SERVICE)")
        if "ALL" not in (caps.get("drop") or []):
            v.append(f"{name}: capabilities.drop does not include ALL")
        if sc.get("allowPrivilegeEscalation") is not False:
            v.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            v.append(f"{name}: runAsNonRoot is not true")
        run_as = sc.get("runAsUser", psc.get("runAsUser"))
        if run_as is not None and (not isinstance(run_as, int) or run_as == 0):
            v.append(f"{name}: runAsUser {run_as!r} is root or not numeric")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            v.append(f"{name}: seccompProfile is {seccomp!r}, needs RuntimeDefault or Localhost")
    return v


def chart_policy_violations(spec: dict) -> list[str]:
    """What the chart promises beyond the PSS: numeric non-root UID, read-only root fs, no SA token."""
    v = []
    if spec.get("automountServiceAccountToken") is not False:
        v.append("automountServiceAccountToken is not false")
    psc = spec.get("securityContext") or {}
    for c in spec.get("containers", []):
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            v.append(f"{c['name']}: readOnlyRootFilesystem is not true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            v.append(f"{c['name']}: no numeric non-root runAsUser")
        if not any(m.get("mountPath") == "/tmp" for m in c.get("volumeMounts", [])):
            v.append(f"{c['name']}: no writable /tmp")
    return v


@pytest.mark.parametrize("case", CASES)
def test_every_pod_spec_is_restricted(case):
    specs = pod_specs(render_case("helm3", case))
    assert specs, "no pod spec rendered"
    for label, spec in specs:
        assert restricted_violations(spec) == [], label
        assert chart_policy_violations(spec) == [], label


@pytest.mark.parametrize("args, expected", [
    (["--set", "securityContext.allowPrivilegeEscalation=true"], "allowPrivilegeEscalation is not false"),
    (["--set", "securityContext.runAsUser=0", "--set", "podSecurityContext.runAsUser=0"], "runAsUser"),
    (["--set", "securityContext.runAsNonRoot=false", "--set", "podSecurityContext.runAsNonRoot=false"],
     "runAsNonRoot"),
    (["--set-json", 'securityContext.capabilities.drop=["NET_RAW"]'], "capabilities.drop does not include ALL"),
    (["--set-json", 'securityContext.capabilities={"drop":["ALL"],"add":["NET_ADMIN"]}'], "NET_ADMIN"),
    (["--set", "securityContext.seccompProfile.type=Unconfined",
      "--set", "podSecurityContext.seccompProfile.type=Unconfined"], "seccompProfile"),
    (["--set", "securityContext.privileged=true"], "privileged"),
    (["--set-json", 'extraVolumes=[{"name":"host","hostPath":{"path":"/var/run"}}]'], "hostPath"),
    (["--set-json", 'extraVolumes=[{"name":"nfs","nfs":{"server":"nfs","path":"/"}}]'], "not allowed"),
], ids=["privilege-escalation", "root-uid", "run-as-root", "no-drop-all", "extra-capability",
        "unconfined-seccomp", "privileged", "hostpath", "nfs-volume"])
@pytest.mark.parametrize("workload", ["inferenceService", "deployment"])
def test_bad_security_values_are_caught(args, expected, workload):
    """A check that cannot fail is worthless: each bad override must be reported."""
    objs = render("helm3", "--set", f"workload={workload}", *args)
    found = []
    for label, spec in pod_specs(objs):
        if label.startswith("Pod/"):
            continue
        found += restricted_violations(spec)
    assert any(expected in f for f in found), f"{expected!r} not reported; got {found}"


def test_host_namespaces_are_caught():
    spec = json.loads(json.dumps(pod_specs(render_case("helm3", "deployment"))[0][1]))
    spec.update(hostNetwork=True, hostPID=True)
    spec["containers"][0]["ports"].append({"containerPort": 9, "hostPort": 9})
    found = restricted_violations(spec)
    assert {"hostNetwork is true", "hostPID is true"} <= set(found)
    assert any("hostPort 9" in f for f in found)
