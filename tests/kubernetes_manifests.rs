//! deploy/kubernetes/, validated offline: every resource the kustomization
//! lists passes kubernetes-validate --strict (the schemas ship in the PyPI
//! package, scripts/install-test-deps.sh), the ConfigMap's config passes
//! `starttls-proxy check` with the demo certificate at the mounted paths,
//! and the Deployment keeps the promises docs/operations.md makes.
//! Not covered yet: the cert-manager and Prometheus-operator objects (not
//! written) and a kustomize render (no kustomize on Debian 12 or PyPI).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

const K8S_VERSION: &str = "1.33.0";

fn dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every YAML document of `file`, as JSON (python3-yaml).
fn documents(file: &std::path::Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file)
        .output()
        .expect("python3 with yaml (python3-yaml)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn resources() -> Vec<PathBuf> {
    let k = &documents(&dir().join("kustomization.yaml"))[0];
    k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir().join(r.as_str().unwrap()))
        .collect()
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .args(files)
        .output()
        .expect("kubernetes-validate (scripts/install-test-deps.sh)")
}

#[test]
fn every_resource_of_the_kustomization_validates_strictly() {
    let files = resources();
    assert!(files.len() >= 4, "{files:?}");
    let out = validate(&files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for kind in [
        "configmap/",
        "deployment/",
        "service/",
        "poddisruptionbudget/",
    ] {
        assert!(text.contains(kind), "{kind} not validated: {text}");
    }
}

#[test]
fn the_validator_rejects_a_misspelt_field() {
    let tmp = tempdir();
    let bad = tmp.path().join("deployment.yaml");
    let text = std::fs::read_to_string(dir().join("deployment.yaml")).unwrap();
    std::fs::write(&bad, text.replacen("  replicas: 2", "  replica: 2", 1)).unwrap();
    assert!(!validate(&[bad]).status.success());
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn deployment_keeps_the_documented_promises() {
    let docs: Vec<_> = resources().iter().flat_map(|f| documents(f)).collect();
    let d = kind(&docs, "Deployment");
    let spec = &d["spec"]["template"]["spec"];
    assert!(d["spec"]["replicas"].as_u64().unwrap() >= 2);
    let c = &spec["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    // The certificate Secret is a directory mount: a subPath mount would
    // never see cert-manager's ..data swap.
    let cert = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cert-mx1")
        .unwrap();
    assert!(cert.get("subPath").is_none(), "{cert}");

    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    let config = kind(&docs, "ConfigMap")["data"]["starttls-proxy.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let parsed: toml::Value = toml::from_str(&config).unwrap();
    let shutdown =
        humantime::parse_duration(parsed["timeouts"]["shutdown_grace"].as_str().unwrap()).unwrap();
    assert!(grace > shutdown.as_secs(), "{grace}s <= {shutdown:?}");

    let pdb = kind(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["type"] == "LoadBalancer")
        .unwrap();
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    // PROXY v2 from the balancer, from the trusted networks only.
    let listener = &parsed["listener"][0];
    assert_eq!(listener["proxy_protocol"]["version"].as_integer(), Some(2));
    assert!(
        !listener["proxy_protocol"]["trusted"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_configmap_config_passes_check_with_a_certificate_at_the_mounted_path() {
    let docs = documents(&dir().join("configmap.yaml"));
    let config = kind(&docs, "ConfigMap")["data"]["starttls-proxy.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let tmp = tempdir();
    let demo = certs().join("mx1.example.test");
    let text = config
        .replace(
            "/etc/starttls-proxy/certs/mx1/tls.crt",
            demo.join("fullchain.pem").to_str().unwrap(),
        )
        .replace(
            "/etc/starttls-proxy/certs/mx1/tls.key",
            demo.join("privkey.pem").to_str().unwrap(),
        )
        // The demo chain ends at the demo root, not a system one.
        .replace(
            "[tls]\n",
            &format!(
                "[tls]\ntrust_anchors = \"{}\"\n",
                certs().join("ca.pem").display()
            ),
        );
    assert_ne!(text, config);
    let path = tmp.path().join("k8s.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_bin(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
