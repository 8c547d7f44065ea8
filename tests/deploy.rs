//! `deploy/`, as `kubectl apply -k deploy/` would apply it: rendered by the real kubectl's
//! kustomize, every object decoded into its `k8s-openapi` type with nothing left over (a
//! misspelt or misplaced field fails), the RBAC equal to the API calls each component's code
//! makes, Pod Security "restricted" wherever the workload allows it, the agent on every node
//! with the host read-only, and every container's arguments accepted by the binary's own parser.

use std::collections::{BTreeMap, BTreeSet};

use clap::Parser;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Namespace, PodSpec, Secret, Service, ServiceAccount},
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    scheduling::v1::PriorityClass,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn rendered() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let out = std::process::Command::new("kubectl").args(["kustomize", dir]).output().expect("kubectl is installed");
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(Value::deserialize(d).unwrap()).unwrap())
        .collect()
}

use serde::Deserialize;

/// Decodes `doc` as `T` and checks that encoding it again gives the same document: a field
/// the type does not have (a typo, a wrong level) would be dropped, and is reported.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> T {
    let t: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", name(doc)));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(back, *doc, "{}: a field is unknown to the type or misplaced", name(doc));
    t
}

fn name(doc: &Value) -> String {
    format!("{} {}/{}", doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])
}

/// The rules a service account is granted, as (API group, resource, verb), and whether each came
/// from a namespaced Role.
fn granted(
    docs: &[Value],
    account: &str,
    cluster_roles: &BTreeMap<String, Vec<PolicyRule>>,
) -> BTreeSet<(String, String, String, bool)> {
    let mut out = BTreeSet::new();
    let subject = |d: &Value| {
        d["subjects"].as_array().into_iter().flatten().any(|s| s["kind"] == "ServiceAccount" && s["name"] == account)
    };
    let mut add = |rules: &[PolicyRule], namespaced: bool| {
        for r in rules {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        assert!(g != "*" && res != "*" && v != "*", "{account}: no wildcards ({g} {res} {v})");
                        out.insert((g.clone(), res.clone(), v.clone(), namespaced));
                    }
                }
            }
        }
    };
    let roles: BTreeMap<String, Vec<PolicyRule>> = docs
        .iter()
        .filter(|d| d["kind"] == "Role")
        .map(|d| {
            let r: Role = typed(d);
            (r.metadata.name.unwrap_or_default(), r.rules.unwrap_or_default())
        })
        .collect();
    for d in docs.iter().filter(|d| subject(d)) {
        let role = d["roleRef"]["name"].as_str().unwrap_or_default();
        match d["kind"].as_str() {
            Some("ClusterRoleBinding") => add(&cluster_roles[role], false),
            Some("RoleBinding") => add(&roles[role], true),
            other => panic!("{other:?} names {account}"),
        }
    }
    out
}

fn wanted(access: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    access.iter().flat_map(|(g, r, vs)| vs.iter().map(move |v| (g.to_string(), r.to_string(), v.to_string()))).collect()
}

/// Pod Security "restricted", as the admission controller checks it.
fn restricted(what: &str, pod: &PodSpec) {
    let psc = pod.security_context.as_ref().expect("a pod security context");
    assert_eq!(psc.run_as_non_root, Some(true), "{what}: runAsNonRoot");
    assert_eq!(psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"), "{what}: seccomp");
    assert!(!pod.host_pid.unwrap_or(false) && !pod.host_network.unwrap_or(false), "{what}: no host namespaces");
    assert!(pod.volumes.iter().flatten().all(|v| v.host_path.is_none()), "{what}: no hostPath");
    for c in &pod.containers {
        let sc = c.security_context.as_ref().expect("a container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}/{}", c.name);
        assert_eq!(sc.privileged, None, "{what}/{}", c.name);
        let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{what}/{}: drop ALL", c.name);
        assert!(c.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some(), "{what}/{}: limits", c.name);
    }
}

/// The container's arguments, with `$(VAR)` as Kubernetes expands it from `env`, and the
/// values the environment would give, accepted by `firebreak`'s own command-line parser.
fn parses(what: &str, args: &[String], env: &BTreeMap<&str, &str>, extra: &[&str]) {
    let mut argv = vec!["firebreak".to_owned()];
    for a in args {
        let mut a = a.clone();
        for (k, v) in env {
            a = a.replace(&format!("$({k})"), v);
        }
        assert!(!a.contains("$("), "{what}: `{a}` names an unset variable");
        argv.push(a);
    }
    argv.extend(extra.iter().map(|s| s.to_string()));
    if let Err(e) = firebreak::cli::Cli::try_parse_from(&argv) {
        panic!("{what}: {argv:?} is refused:\n{e}");
    }
}

#[test]
fn the_manifests_render_decode_and_grant_exactly_what_the_code_calls() {
    let docs = rendered();
    let mut kinds = BTreeMap::<String, usize>::new();
    let mut cluster_roles = BTreeMap::new();
    let mut pods: Vec<(String, String, PodSpec)> = Vec::new();
    let mut namespaces = BTreeMap::new();
    let mut config = BTreeMap::new();
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or_default().to_owned();
        *kinds.entry(kind.clone()).or_default() += 1;
        match kind.as_str() {
            "Namespace" => {
                let n: Namespace = typed(d);
                namespaces.insert(n.metadata.name.clone().unwrap(), n.metadata.labels.unwrap_or_default());
            }
            "ConfigMap" => {
                let c: ConfigMap = typed(d);
                config.extend(c.data.unwrap_or_default());
            }
            "Secret" => drop(typed::<Secret>(d)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(d)),
            "ClusterRole" => {
                let r: ClusterRole = typed(d);
                cluster_roles.insert(r.metadata.name.unwrap(), r.rules.unwrap_or_default());
            }
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(d)),
            "Role" => drop(typed::<Role>(d)),
            "RoleBinding" => drop(typed::<RoleBinding>(d)),
            "PriorityClass" => drop(typed::<PriorityClass>(d)),
            "Service" => drop(typed::<Service>(d)),
            "NetworkPolicy" => drop(typed::<NetworkPolicy>(d)),
            "Deployment" => {
                let dep: Deployment = typed(d);
                let ns = dep.metadata.namespace.clone().unwrap();
                pods.push((dep.metadata.name.unwrap(), ns, dep.spec.unwrap().template.spec.unwrap()));
            }
            "DaemonSet" => {
                let ds: DaemonSet = typed(d);
                let ns = ds.metadata.namespace.clone().unwrap();
                pods.push((ds.metadata.name.unwrap(), ns, ds.spec.unwrap().template.spec.unwrap()));
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    assert_eq!(kinds["Deployment"], 4, "{kinds:?}");
    assert_eq!(kinds["DaemonSet"], 1, "{kinds:?}");

    // RBAC: exactly what each component's code calls; nothing for the others.
    let detector = granted(&docs, "firebreak-detector", &cluster_roles);
    let remediator = granted(&docs, "firebreak-remediator", &cluster_roles);
    let plain = |g: &BTreeSet<(String, String, String, bool)>| {
        g.iter().map(|(a, b, c, _)| (a.clone(), b.clone(), c.clone())).collect::<BTreeSet<_>>()
    };
    assert_eq!(plain(&detector), wanted(firebreak_detector::KUBE_ACCESS));
    assert_eq!(plain(&remediator), wanted(firebreak_remediator::KUBE_ACCESS));
    assert!(
        remediator.iter().chain(&detector).all(|(_, res, _, namespaced)| (res == "leases") == *namespaced),
        "leases only in Firebreak's namespace, the rest cluster-wide: {remediator:?} {detector:?}"
    );
    for account in ["firebreak-agent", "firebreak-event-center", "firebreak-gate"] {
        assert!(granted(&docs, account, &cluster_roles).is_empty(), "{account} calls no Kubernetes API");
    }

    // Pod Security: restricted for the control plane; the agent alone is privileged.
    assert_eq!(namespaces["firebreak"]["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(namespaces["firebreak-agent"]["pod-security.kubernetes.io/enforce"], "privileged");
    let env: BTreeMap<&str, &str> = config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (name, ns, pod) in &pods {
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default();
        if ns == "firebreak" {
            restricted(name, pod);
            let token_needed = ["firebreak-detector", "firebreak-remediator"].contains(&name.as_str());
            assert_eq!(pod.automount_service_account_token != Some(false), token_needed, "{name}");
            let extra: &[&str] = if name == "firebreak-remediator" { &["--gate-token", "t"] } else { &[] };
            parses(name, &args, &env, extra);
        } else {
            assert_eq!(name, "firebreak-agent");
            let tolerations = pod.tolerations.clone().unwrap_or_default();
            assert!(
                tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
                "tolerates every taint"
            );
            assert_eq!(pod.priority_class_name.as_deref(), Some("firebreak-agent"));
            assert_eq!(pod.automount_service_account_token, Some(false), "the agent has no kube");
            let mounts: BTreeMap<String, bool> = c
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| (m.mount_path.clone(), m.read_only.unwrap_or(false)))
                .collect();
            for host in ["/host/dev/kmsg", "/host/proc", "/host/sys"] {
                assert_eq!(mounts.get(host), Some(&true), "{host} read-only");
            }
            assert!(c.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some(), "agent limits");
            let mut argv = vec!["agent".to_owned()];
            argv.extend(args);
            parses(name, &argv, &env, &["--cluster", "c1", "--node", "n1", "--kafka-brokers", "k:9092"]);
        }
    }
}
