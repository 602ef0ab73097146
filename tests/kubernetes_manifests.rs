//! deploy/kubernetes/, validated offline. `kubectl kustomize` renders the
//! kustomization (scripts/install-test-deps.sh: an existing kubectl, or
//! Debian's kubernetes-client), and every rendered object is validated:
//! core kinds with kubernetes-validate --strict (the Kubernetes 1.33
//! schemas ship in the PyPI package), the cert-manager `Certificate` and the
//! Prometheus-operator `ServiceMonitor` and `PrometheusRule` with
//! tests/k8s-crd/validate.js against their CRD schemas (npm packages pinned
//! in tests/k8s-crd/package-lock.json: @kubernetes-models/cert-manager 4.4.4,
//! from cert-manager v1.11.2's CRDs, and
//! @kubernetes-models/prometheus-operator 4.4.4, from Prometheus-operator
//! v0.65.1's). Those are strict too: besides the schema (types, enums,
//! required fields), which like the API server lets unknown fields through,
//! the validator type-checks each object against the interface generated
//! from the same schema, rejecting fields it does not declare.
//!
//! Then the links a wrong manifest would break: the Certificate's Secret is
//! the one the Deployment mounts where the ConfigMap's config reads it, its
//! names cover the config's hostname; the ServiceMonitor selects the
//! metrics Service, by a port it has, as the job the alerts expect; the
//! PrometheusRule carries exactly deploy/monitoring/alerts.yml. Also: the
//! ConfigMap's config passes `starttls-proxy check` with the demo
//! certificate at the mounted paths, and the Deployment keeps the promises
//! docs/operations.md makes.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

const K8S_VERSION: &str = "1.33.0";

/// API groups validated by tests/k8s-crd/validate.js, not kubernetes-validate.
const CRD_GROUPS: [&str; 2] = ["cert-manager.io", "monitoring.coreos.com"];

fn dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Every YAML document of `text`, as JSON (python3-yaml).
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with yaml (python3-yaml)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every YAML document of `file`, as JSON.
fn documents(file: &std::path::Path) -> Vec<Value> {
    yaml_documents(&std::fs::read_to_string(file).unwrap())
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

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl kustomize deploy/kubernetes`, every object of it.
fn render() -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir())
        .output()
        .expect("kubectl (scripts/install-test-deps.sh)");
    assert!(out.status.success(), "{}", text(&out));
    yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

fn is_crd_kind(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap();
    CRD_GROUPS.iter().any(|g| api.starts_with(&format!("{g}/")))
}

/// apiVersion, kind and name: what identifies an object here (one namespace).
fn id(doc: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_else(|| panic!("{doc}")).to_string();
    (
        s(&doc["apiVersion"]),
        s(&doc["kind"]),
        s(&doc["metadata"]["name"]),
    )
}

/// tests/k8s-crd/validate.js on `docs` (installed by
/// scripts/install-test-deps.sh with npm ci).
fn validate_crds(docs: &[Value]) -> std::process::Output {
    let k8s_crd = repo().join("tests/k8s-crd");
    assert!(
        k8s_crd.join("node_modules/typescript").is_dir(),
        "{}/node_modules missing: run scripts/install-test-deps.sh",
        k8s_crd.display()
    );
    let tmp = tempdir();
    let file = tmp.path().join("docs.json");
    std::fs::write(&file, serde_json::to_vec(docs).unwrap()).unwrap();
    Command::new("node")
        .arg(k8s_crd.join("validate.js"))
        .arg(&file)
        .output()
        .expect("node (scripts/install-test-deps.sh)")
}

#[test]
fn every_object_of_the_rendered_kustomization_validates_strictly() {
    let rendered = render();

    // The render is exactly the listed resources, and holds the objects of
    // issue #16 besides the core kinds.
    let listed: Vec<_> = resources().iter().flat_map(|f| documents(f)).collect();
    let ids = |docs: &[Value]| docs.iter().map(id).collect::<BTreeSet<_>>();
    assert_eq!(ids(&rendered), ids(&listed));
    assert_eq!(rendered.len(), listed.len());
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Certificate",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(rendered.iter().any(|d| d["kind"] == kind), "no {kind}");
    }

    let (crds, core): (Vec<Value>, Vec<Value>) = rendered.into_iter().partition(is_crd_kind);

    // Core kinds: kubernetes-validate --strict, one multi-document file.
    let tmp = tempdir();
    let file = tmp.path().join("core.yaml");
    let yaml: Vec<String> = core.iter().map(|d| d.to_string()).collect();
    std::fs::write(&file, yaml.join("\n---\n")).unwrap();
    let out = validate(&[file]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    // It passes a kind it has no schema for with a warning: none may be left.
    assert!(!report.contains("WARN"), "{report}");
    for d in &core {
        let (_, kind, name) = id(d);
        let line = format!("passed for resource {}/{name} ", kind.to_lowercase());
        assert!(
            report.contains(&line),
            "{kind}/{name} not validated: {report}"
        );
    }

    // CRD kinds: against their CRD schemas, undeclared fields refused.
    let out = validate_crds(&crds);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    for d in &crds {
        let (api, kind, name) = id(d);
        assert!(
            report
                .lines()
                .any(|l| l == format!("ok {api} {kind} {name}")),
            "{kind}/{name} not validated: {report}"
        );
    }
    assert_eq!(report.matches("\nok ").count(), crds.len(), "{report}");
}

#[test]
fn the_crd_validator_rejects_wrong_objects() {
    let rendered = render();
    let cert = kind(&rendered, "Certificate");
    let monitor = kind(&rendered, "ServiceMonitor");
    let rule = kind(&rendered, "PrometheusRule");
    let named = |doc: &Value, name: &str, change: &dyn Fn(&mut Value)| {
        let mut doc = doc.clone();
        doc["metadata"]["name"] = name.into();
        change(&mut doc);
        doc
    };
    let docs = [
        named(cert, "good", &|_| {}),
        // Not an enum value of the schema.
        named(cert, "bad-algorithm", &|d| {
            d["spec"]["privateKey"]["algorithm"] = "DSA".into()
        }),
        // A port number where the schema wants the Service port's name.
        named(monitor, "port-as-number", &|d| {
            d["spec"]["endpoints"][0]["port"] = 9125.into()
        }),
        // Required by the schema.
        named(cert, "no-secret", &|d| {
            d["spec"].as_object_mut().unwrap().remove("secretName");
        }),
        // Misspelt: the schema lets it through, the type check does not.
        named(cert, "misspelt", &|d| {
            let names = d["spec"].as_object_mut().unwrap().remove("dnsNames");
            d["spec"]["dnsName"] = names.unwrap();
        }),
        named(rule, "misspelt-deep", &|d| {
            d["spec"]["groups"][0]["rules"][0]["labelz"] = serde_json::json!({});
        }),
        // A kind it has no schema for fails, rather than passing unchecked.
        named(cert, "unknown-kind", &|d| d["kind"] = "Certificat".into()),
    ];
    let out = validate_crds(&docs);
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l == "ok cert-manager.io/v1 Certificate good"),
        "{report}"
    );
    for bad in [
        "Certificate bad-algorithm",
        "ServiceMonitor port-as-number",
        "Certificate no-secret",
        "Certificate misspelt",
        "PrometheusRule misspelt-deep",
        "? unknown-kind",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("INVALID ") && l.ends_with(bad)),
            "{bad} not refused: {report}"
        );
    }
    assert!(report.contains("6 of 7 objects invalid"), "{report}");
    // Each of the two checks works on its own: the schema's ...
    for schema in [
        "schema (ajv): data/spec/privateKey/algorithm must be equal to one of the allowed values",
        "schema (ajv): data/spec/endpoints/0/port must be string",
        "schema (ajv): data/spec must have required property secretName",
    ] {
        assert!(report.contains(schema), "{schema}: {report}");
    }
    // ... and the type check, for what the schema lets through.
    for undeclared in [
        "'\"dnsName\"' does not exist",
        "'\"labelz\"' does not exist",
    ] {
        assert!(report.contains(undeclared), "{undeclared}: {report}");
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

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
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

/// The proxy's config in the ConfigMap, parsed.
fn config(docs: &[Value]) -> toml::Value {
    let text = kind(docs, "ConfigMap")["data"]["starttls-proxy.toml"]
        .as_str()
        .unwrap();
    toml::from_str(text).unwrap()
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}"))
}

#[test]
fn the_certificate_lands_where_the_deployment_mounts_and_the_config_reads_it() {
    let docs = render();
    let cert = kind(&docs, "Certificate");
    let secret = &cert["spec"]["secretName"];
    let spec = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let volume = array(&spec["volumes"])
        .iter()
        .find(|v| v["secret"]["secretName"] == *secret)
        .unwrap_or_else(|| panic!("no volume of Secret {secret}"));
    // All keys: an `items` list could leave tls.key out.
    assert!(volume["secret"].get("items").is_none(), "{volume}");
    let mount = array(&spec["containers"][0]["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("{volume} is not mounted"));
    // A directory mount, or the ..data swap on renewal never arrives.
    assert!(mount.get("subPath").is_none(), "{mount}");
    let mounted = mount["mountPath"].as_str().unwrap();

    // The default certificate is read from the files cert-manager writes.
    let config = config(&docs);
    let default = config["tls"]["default_certificate"].as_str().unwrap();
    let entry = config["certificate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(default))
        .unwrap();
    assert_eq!(
        entry["chain"].as_str(),
        Some(format!("{mounted}/tls.crt").as_str())
    );
    assert_eq!(
        entry["key"].as_str(),
        Some(format!("{mounted}/tls.key").as_str())
    );

    // It covers the MX name: the hostname the default certificate serves.
    let names: Vec<&str> = array(&cert["spec"]["dnsNames"])
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let hostname = config["hostname"].as_str().unwrap();
    assert!(names.contains(&hostname), "{hostname} not in {names:?}");
    assert!(cert["spec"]["issuerRef"]["name"].is_string(), "{cert}");
}

#[test]
fn the_servicemonitor_scrapes_the_metrics_port_as_the_job_the_alerts_expect() {
    let docs = render();
    let monitor = kind(&docs, "ServiceMonitor");
    let selector = &monitor["spec"]["selector"];
    assert!(selector.get("matchExpressions").is_none(), "{selector}");
    let matches = |labels: &Value| {
        selector["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels[k] == *v)
    };
    let services: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Service" && matches(&d["metadata"]["labels"]))
        .collect();
    assert_eq!(services.len(), 1, "the selector matches {services:?}");
    let service = services[0];
    // Without a namespaceSelector it looks in its own namespace only.
    assert!(monitor["spec"].get("namespaceSelector").is_none());
    assert_eq!(
        monitor["metadata"]["namespace"],
        service["metadata"]["namespace"]
    );

    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"];
    let selects_pods = service["spec"]["selector"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| pod["metadata"]["labels"][k] == *v);
    assert!(selects_pods, "{service}");
    let listen: std::net::SocketAddr = config(&docs)["metrics"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let endpoints = array(&monitor["spec"]["endpoints"]);
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        let port = array(&service["spec"]["ports"])
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("no port {} on {service}", endpoint["port"]));
        // That port reaches the one the proxy's [metrics] listens on.
        let target = &port["targetPort"];
        let container_port = array(&pod["spec"]["containers"][0]["ports"])
            .iter()
            .find(|p| p["name"] == *target || p["containerPort"] == *target)
            .unwrap_or_else(|| panic!("no container port {target}"));
        assert_eq!(
            container_port["containerPort"].as_u64(),
            Some(u64::from(listen.port()))
        );
        assert_eq!(endpoint["path"].as_str().unwrap_or("/metrics"), "/metrics");
    }

    // The job label of the scraped series: the Service's value of the
    // jobLabel label, or else the Service's name.
    let job = match monitor["spec"]["jobLabel"].as_str() {
        Some(label) => &service["metadata"]["labels"][label],
        None => &service["metadata"]["name"],
    };
    let job = job.as_str().unwrap();
    let alerts = std::fs::read_to_string(repo().join("deploy/monitoring/alerts.yml")).unwrap();
    let up = format!("up{{job=\"{job}\"}}");
    assert!(alerts.contains(&up), "alerts.yml does not watch {up}");
}

#[test]
fn the_prometheusrule_carries_exactly_the_alerts_of_deploy_monitoring() {
    let docs = render();
    let rule = kind(&docs, "PrometheusRule");
    let alerts = &documents(&repo().join("deploy/monitoring/alerts.yml"))[0];
    assert!(!array(&alerts["groups"]).is_empty());
    assert!(
        rule["spec"] == *alerts,
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/monitoring/alerts.yml: \
         regenerate it as its header says"
    );
}
