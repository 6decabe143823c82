//! The plugin binary against a cluster, and through the real kubectl. Every scenario that
//! needs a cluster runs on kubesim and on the real control plane (`on_both_backends!`);
//! the few that stay on kubesim say why.

mod harness;
mod install;
mod krew;

use std::time::Duration;

use harness::{Cluster, PLUGIN, cells, eventually, require_kubectl, run, status};
use kubesim::on_both_backends;
use kubesim::testing::Backend;
use serde_json::{Value, json};

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Every row without its AGE cell (which depends on the clock), after checking it looks like one.
fn without_age(table: &str, age_column: usize) -> Vec<Vec<String>> {
    cells(table)
        .into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            let age = row.remove(age_column);
            if i > 0 {
                assert!(
                    age.ends_with('s') || age.ends_with('m'),
                    "AGE {age:?} in {table}"
                );
            }
            row
        })
        .collect()
}

/// Two KubervisorServices in the test's namespace (one reconciled, one not) and one in
/// `shop`; returns the cluster and `shop`'s name.
async fn three_resources(backend: Backend) -> (Cluster, String) {
    let mut cluster = Cluster::start(backend).await;
    let shop = cluster.namespace("shop").await;
    let ns = cluster.ns.clone();
    cluster.kvs(&ns, "web", "web").await;
    cluster
        .set_status(
            &ns,
            "web",
            status("True", "Running", "breakers errors running", [5, 1, 1, 0]),
        )
        .await;
    cluster.kvs(&ns, "api", "api").await;
    cluster.kvs(&shop, "cart", "cart").await;
    cluster
        .set_status(
            &shop,
            "cart",
            status(
                "False",
                "ServiceNotFound",
                "Service shop/cart not found",
                [0, 0, 0, 0],
            ),
        )
        .await;
    (cluster, shop)
}

on_both_backends! {
async fn list_shows_the_current_namespace_as_a_table(backend: Backend) {
    let (cluster, shop) = three_resources(backend).await;
    for args in [&[][..], &["list"][..]] {
        let run = cluster.plugin(args).await;
        assert_eq!(
            without_age(run.ok(), 6),
            [
                strings(&["NAME", "SERVICE", "STATE", "MANAGED", "BROKEN", "PAUSED"]),
                strings(&["api", "api", "<none>", "<none>", "<none>", "<none>"]),
                strings(&["web", "web", "Running", "5", "1", "1"]),
            ],
            "{args:?}: {run:#?}"
        );
        assert!(
            run.stdout.starts_with("NAME   SERVICE   STATE     MANAGED"),
            "{}",
            run.stdout
        );
    }
    let run = cluster.plugin(&["list", "-n", &shop]).await;
    assert_eq!(
        without_age(run.ok(), 6)[1],
        strings(&["cart", "cart", "ServiceNotFound", "0", "0", "0"])
    );
    // Flags before the command work too, as with kubectl.
    let run = cluster.plugin(&[&format!("--namespace={shop}"), "list"]).await;
    assert!(run.ok().contains("cart"), "{run:#?}");
}
}

on_both_backends! {
async fn list_all_namespaces_puts_the_namespace_first(backend: Backend) {
    let (cluster, shop) = three_resources(backend).await;
    let ns = cluster.ns.as_str();
    for args in [&["-A"][..], &["list", "--all-namespaces"][..]] {
        let run = cluster.plugin(args).await;
        assert_eq!(
            cluster.own_rows(without_age(run.ok(), 7), &[ns, &shop]),
            [
                strings(&[
                    "NAMESPACE",
                    "NAME",
                    "SERVICE",
                    "STATE",
                    "MANAGED",
                    "BROKEN",
                    "PAUSED"
                ]),
                strings(&[ns, "api", "api", "<none>", "<none>", "<none>", "<none>"]),
                strings(&[ns, "web", "web", "Running", "5", "1", "1"]),
                strings(&[&shop, "cart", "cart", "ServiceNotFound", "0", "0", "0"]),
            ],
            "{args:?}"
        );
    }
}
}

on_both_backends! {
async fn list_wide_adds_unknown_dry_run_and_breakers(backend: Backend) {
    let (cluster, _) = three_resources(backend).await;
    let run = cluster.plugin(&["list", "-o", "wide"]).await;
    let rows = cells(run.ok());
    assert_eq!(
        rows[0],
        strings(&[
            "NAME", "SERVICE", "STATE", "MANAGED", "BROKEN", "PAUSED", "UNKNOWN", "DRYRUN", "AGE",
            "BREAKERS"
        ])
    );
    assert_eq!(
        rows[2][..8],
        strings(&["web", "web", "Running", "5", "1", "1", "0", "false"])
    );
    assert_eq!(rows[2][9], "errors(discrete)");
}
}

on_both_backends! {
async fn an_empty_namespace_says_so_on_stderr(backend: Backend) {
    let cluster = Cluster::start(backend).await;
    let run = cluster.plugin(&[]).await;
    assert_eq!(run.ok(), "");
    assert_eq!(
        run.stderr,
        format!("No resources found in {} namespace.\n", cluster.ns)
    );
    let run = cluster.plugin(&["-n", "nowhere"]).await;
    assert_eq!(run.ok(), "");
    assert_eq!(run.stderr, "No resources found in nowhere namespace.\n");
    // The shared real control plane holds other tests' resources: only kubesim is empty.
    if !cluster.is_real() {
        let run = cluster.plugin(&["-A"]).await;
        assert_eq!(run.ok(), "");
        assert_eq!(run.stderr, "No resources found\n");
    }
}
}

on_both_backends! {
async fn json_and_yaml_print_a_list_of_the_objects(backend: Backend) {
    let (cluster, shop) = three_resources(backend).await;
    let run = cluster.plugin(&["-o", "json"]).await;
    let doc: Value = serde_json::from_str(run.ok()).expect("JSON");
    let run = cluster.plugin(&["list", "-o", "yaml"]).await;
    let from_yaml: Value = serde_saphyr::from_str(run.ok()).expect("YAML");
    assert_eq!(doc, from_yaml);
    assert_eq!(doc["apiVersion"], "v1");
    assert_eq!(doc["kind"], "List");
    let items = doc["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(items[1]["kind"], "KubervisorService");
    assert_eq!(items[1]["apiVersion"], "kubervisor.k8s.io/v1alpha1");
    assert_eq!(items[1]["spec"]["service"], "web");
    assert_eq!(items[1]["status"]["podCount"]["nbPodsManaged"], 5);

    let run = cluster.plugin(&["-A", "-o", "json"]).await;
    let doc: Value = serde_json::from_str(run.ok()).unwrap();
    let namespaces: Vec<&str> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["namespace"].as_str().unwrap())
        .collect();
    let rows = namespaces.iter().map(|ns| strings(&[ns])).collect();
    let own = cluster.own_rows(rows, &[&cluster.ns, &shop]);
    assert_eq!(own.len(), 3, "{namespaces:?}");
    let run = cluster.plugin(&["-n", "nowhere", "-o", "json"]).await;
    let doc: Value = serde_json::from_str(run.ok()).unwrap();
    assert_eq!(doc["items"], json!([]));
}
}

on_both_backends! {
async fn kubeconfig_env_context_and_its_namespace_are_honoured(backend: Backend) {
    let (cluster, shop_ns) = three_resources(backend).await;
    let dir = cluster.dir.path();
    // A first file whose current context points nowhere, and a context on the cluster defaulting to `shop`.
    let unreachable = dir.join("unreachable");
    std::fs::write(
        &unreachable,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: nowhere\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: nobody\ncurrent-context: nowhere\nusers:\n- name: nobody\n  user: {}\n",
    )
    .unwrap();
    // The cluster's own kubeconfig (with its credentials), its context renamed `sim-shop`
    // and defaulting to `shop`, and no current context.
    let mut config = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    config.current_context = None;
    for named in &mut config.contexts {
        named.name = "sim-shop".into();
        named.context.as_mut().unwrap().namespace = Some(shop_ns.clone());
    }
    let shop = dir.join("shop");
    std::fs::write(&shop, serde_json::to_vec(&config).unwrap()).unwrap();
    let merged = std::env::join_paths([&unreachable, &shop]).unwrap();
    let merged = merged.to_str().unwrap();

    let run = harness::run(
        PLUGIN,
        &["--context", "sim-shop"],
        dir,
        &[("KUBECONFIG", merged)],
    )
    .await;
    assert_eq!(cells(run.ok())[1][0], "cart", "{run:#?}");
    let run = harness::run(
        PLUGIN,
        &["--context", "sim-shop", "-n", &cluster.ns],
        dir,
        &[("KUBECONFIG", merged)],
    )
    .await;
    assert_eq!(cells(run.ok())[1][0], "api", "{run:#?}");
    // --kubeconfig wins over KUBECONFIG.
    let run = harness::run(
        PLUGIN,
        &["--kubeconfig", cluster.kubeconfig.to_str().unwrap()],
        dir,
        &[("KUBECONFIG", merged)],
    )
    .await;
    assert_eq!(cells(run.ok())[1][0], "api", "{run:#?}");
    // ~/.kube/config is read when nothing else is given.
    std::fs::create_dir_all(dir.join(".kube")).unwrap();
    std::fs::copy(&cluster.kubeconfig, dir.join(".kube/config")).unwrap();
    let run = harness::run(PLUGIN, &[], dir, &[]).await;
    assert_eq!(cells(run.ok())[1][0], "api", "{run:#?}");

    let run = harness::run(
        PLUGIN,
        &["--context", "nope"],
        dir,
        &[("KUBECONFIG", merged)],
    )
    .await;
    assert_eq!(
        run.failed(),
        "error: context \"nope\" not found in the kubeconfig\n"
    );
}
}

/// The Service `web` (guarded when `active`) and its KubervisorService, reconciled.
async fn guarded_web(backend: Backend, active: bool) -> Cluster {
    let cluster = Cluster::start(backend).await;
    let ns = cluster.ns.as_str();
    let selector = if active {
        json!({"app": "web", "kubervisor/traffic": "yes"})
    } else {
        json!({"app": "web"})
    };
    cluster.service(ns, "web", selector).await;
    cluster.kvs(ns, "web", "web").await;
    cluster
        .set_status(
            ns,
            "web",
            status("True", "Running", "breakers errors running", [5, 1, 1, 1]),
        )
        .await;
    cluster
}

on_both_backends! {
async fn describe_shows_the_spec_conditions_and_every_managed_pod(backend: Backend) {
    let cluster = guarded_web(backend, true).await;
    let ns = cluster.ns.as_str();
    let none = json!({});
    cluster
        .pod(
            ns,
            "web-1",
            json!({"app": "web", "kubervisor/traffic": "yes", "kubervisor/name": "web"}),
            none.clone(),
        )
        .await;
    cluster
        .pod(
            ns,
            "web-2",
            json!({"app": "web", "kubervisor/traffic": "no", "kubervisor/name": "web", "kubervisor/strategy": "errors"}),
            json!({"breaker/breakAt": "2026-11-25T10:00:00Z", "breaker/retryCount": "2"}),
        )
        .await;
    cluster
        .pod(
            ns,
            "web-3",
            json!({"app": "web", "kubervisor/traffic": "pause", "kubervisor/name": "web", "kubervisor/strategy": "errors"}),
            json!({"breaker/breakAt": "2026-11-25T09:00:00Z", "breaker/retryCount": "4"}),
        )
        .await;
    cluster
        .pod(ns, "web-4", json!({"app": "web"}), none.clone())
        .await;
    cluster
        .pod(
            ns,
            "moved-1",
            json!({"app": "old", "kubervisor/traffic": "yes", "kubervisor/name": "web"}),
            none.clone(),
        )
        .await;
    cluster
        .pod(
            ns,
            "other-1",
            json!({"app": "other", "kubervisor/traffic": "yes"}),
            none,
        )
        .await;
    cluster
        .wait_ready(ns, &["web-1", "web-2", "web-3", "web-4", "moved-1"])
        .await;

    let run = cluster.plugin(&["describe", "web"]).await;
    let out = run.ok();
    for expected in [
        "Name:         web\n".to_string(),
        format!("Namespace:    {ns}\n"),
        "Service:      web (selector app=web,kubervisor/traffic=yes; active)\n".into(),
        "Dry Run:      false\n".into(),
        "Pod Counts:   5 managed, 1 broken, 1 paused, 1 unknown\n".into(),
        "Unknown Pods:\n  web-4: label kubervisor/traffic is missing\n".into(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in\n{out}");
    }
    let rows = cells(out);
    let find = |first: &str| {
        rows.iter()
            .find(|r| r.first().map(String::as_str) == Some(first))
            .cloned()
            .unwrap_or_else(|| panic!("no row {first} in\n{out}"))
    };
    assert_eq!(
        find("errors")[..3],
        strings(&["errors", "discreteValueOutOfList", "5s"])
    );
    assert_eq!(
        find("(default)"),
        strings(&[
            "(default)",
            "retryAndPause",
            "30s",
            "3",
            "1",
            "<none>",
            "<none>",
            "evict"
        ])
    );
    assert_eq!(
        find("Ready"),
        strings(&[
            "Ready",
            "True",
            "Running",
            "2026-11-25T10:00:00Z",
            &find("Ready")[4],
            "ago)",
            "breakers",
            "errors",
            "running"
        ])
    );
    let pod_header = strings(&[
        "NAME", "TRAFFIC", "READY", "STRATEGY", "BREAK-AT", "RETRIES",
    ]);
    let pods_at = rows
        .iter()
        .position(|r| *r == pod_header)
        .expect("pod table");
    let pods: Vec<Vec<String>> = rows[pods_at + 1..pods_at + 6].to_vec();
    let names: Vec<&str> = pods.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        ["moved-1", "web-1", "web-2", "web-3", "web-4"],
        "{out}"
    );
    assert_eq!(
        pods[1],
        strings(&["web-1", "yes", "True", "<none>", "<none>", "0"])
    );
    assert_eq!(
        pods[2][..5],
        strings(&["web-2", "no", "True", "errors", "2026-11-25T10:00:00Z"])
    );
    assert_eq!(pods[2].last().unwrap(), "2");
    assert_eq!(
        pods[3][..5],
        strings(&["web-3", "pause", "True", "errors", "2026-11-25T09:00:00Z"])
    );
    assert_eq!(pods[3].last().unwrap(), "4");
    assert_eq!(
        pods[4],
        strings(&["web-4", "<none>", "True", "<none>", "<none>", "0"])
    );
    assert!(!out.contains("other-1"), "{out}");
}
}

on_both_backends! {
async fn activate_and_deactivate_change_the_service_selector_idempotently(backend: Backend) {
    let cluster = guarded_web(backend, false).await;
    let ns = cluster.ns.as_str();
    for name in ["web-1", "web-2"] {
        cluster
            .pod(
                ns,
                name,
                json!({"app": "web", "kubervisor/traffic": "yes", "kubervisor/name": "web"}),
                json!({}),
            )
            .await;
    }
    cluster
        .pod(ns, "other-1", json!({"app": "other"}), json!({}))
        .await;

    let run = cluster.plugin(&["activate", "web"]).await;
    assert_eq!(
        run.ok(),
        "kubervisorservice \"web\" activated: service \"web\" now selects app=web,kubervisor/traffic=yes\n"
    );
    assert_eq!(run.stderr, "");
    let selector = cluster.selector(ns, "web").await;
    assert_eq!(
        selector.get("kubervisor/traffic").map(String::as_str),
        Some("yes")
    );
    assert_eq!(selector.get("app").map(String::as_str), Some("web"));
    assert!(
        cluster
            .plugin(&["describe", "web"])
            .await
            .ok()
            .contains("; active)")
    );

    let run = cluster.plugin(&["activate", "web"]).await;
    assert!(run.ok().contains("is already active"), "{run:#?}");

    let run = cluster.plugin(&["deactivate", "web"]).await;
    assert_eq!(
        run.ok(),
        "kubervisorservice \"web\" deactivated: service \"web\" now selects app=web, whatever the pods' kubervisor/traffic label\n"
    );
    let selector = cluster.selector(ns, "web").await;
    assert_eq!(selector.len(), 1, "{selector:?}");
    assert_eq!(selector.get("app").map(String::as_str), Some("web"));

    let run = cluster.plugin(&["deactivate", "web"]).await;
    assert!(run.ok().contains("is already inactive"), "{run:#?}");
}
}

on_both_backends! {
async fn activate_is_refused_while_not_ready_unless_forced(backend: Backend) {
    let cluster = guarded_web(backend, false).await;
    let ns = cluster.ns.as_str();
    cluster
        .set_status(
            ns,
            "web",
            status(
                "False",
                "SourceError",
                "breaker errors: prometheus unreachable",
                [0, 0, 0, 0],
            ),
        )
        .await;
    let run = cluster.plugin(&["activate", "web"]).await;
    assert_eq!(
        run.failed(),
        "error: refusing to activate kubervisorservice \"web\": it is not Ready (Ready=False, reason SourceError: breaker errors: prometheus unreachable); pass --force to activate anyway\n"
    );
    assert!(
        !cluster
            .selector(ns, "web")
            .await
            .contains_key("kubervisor/traffic")
    );

    let run = cluster.plugin(&["activate", "web", "--force"]).await;
    assert!(run.ok().contains("activated"), "{run:#?}");
    assert!(
        run.stderr
            .starts_with("warning: kubervisorservice \"web\": it is not Ready"),
        "{run:#?}"
    );
    assert_eq!(
        cluster
            .selector(ns, "web")
            .await
            .get("kubervisor/traffic")
            .map(String::as_str),
        Some("yes")
    );
}
}

on_both_backends! {
async fn activate_is_refused_before_the_operator_wrote_a_status(backend: Backend) {
    let cluster = Cluster::start(backend).await;
    let ns = cluster.ns.as_str();
    cluster.service(ns, "web", json!({"app": "web"})).await;
    cluster.kvs(ns, "web", "web").await;
    let run = cluster.plugin(&["activate", "web"]).await;
    assert!(
        run.failed().contains("it has no Ready condition yet"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("--force"), "{run:#?}");
}
}

on_both_backends! {
async fn activate_is_refused_when_managed_pods_would_lose_traffic_unless_forced(backend: Backend) {
    let cluster = guarded_web(backend, false).await;
    let ns = cluster.ns.as_str();
    let labels = |traffic: Option<&str>| {
        let mut labels = json!({"app": "web"});
        if let Some(t) = traffic {
            labels["kubervisor/traffic"] = json!(t);
        }
        labels
    };
    cluster
        .pod(ns, "web-1", labels(Some("yes")), json!({}))
        .await;
    cluster
        .pod(ns, "web-2", labels(Some("no")), json!({}))
        .await;
    cluster
        .pod(ns, "web-3", labels(None), json!({}))
        .await;
    cluster
        .wait_ready(ns, &["web-1", "web-2", "web-3"])
        .await;
    eventually(
        "all three pods behind the Service",
        Duration::from_secs(10),
        || async {
            match cluster.endpoint_count(ns, "web").await {
                3 => Ok(()),
                n => Err(format!("{n} addresses")),
            }
        },
    )
    .await;

    let run = cluster.plugin(&["activate", "web"]).await;
    assert_eq!(
        run.failed(),
        "error: refusing to activate kubervisorservice \"web\": 2 of 3 managed pods lack kubervisor/traffic=yes and would stop receiving traffic: web-2 (kubervisor/traffic=no), web-3 (no kubervisor/traffic label); pass --force to activate anyway\n"
    );
    assert!(
        !cluster
            .selector(ns, "web")
            .await
            .contains_key("kubervisor/traffic")
    );

    let run = cluster.plugin(&["activate", "web", "--force"]).await;
    assert!(run.ok().contains("activated"), "{run:#?}");
    assert!(
        run.stderr.starts_with("warning: 2 of 3 managed pods lack"),
        "{run:#?}"
    );
    // The selector change is what takes the ejected and unlabelled pods out of the Service.
    eventually(
        "only web-1 behind the Service",
        Duration::from_secs(10),
        || async {
            match cluster.endpoint_count(ns, "web").await {
                1 => Ok(()),
                n => Err(format!("{n} addresses")),
            }
        },
    )
    .await;
}
}

on_both_backends! {
async fn activate_refuses_a_service_without_a_selector_even_when_forced(backend: Backend) {
    let cluster = Cluster::start(backend).await;
    let ns = cluster.ns.as_str();
    cluster.service(ns, "web", json!(null)).await;
    cluster.kvs(ns, "web", "web").await;
    cluster
        .set_status(
            ns,
            "web",
            status("True", "Running", "ok", [0, 0, 0, 0]),
        )
        .await;
    let run = cluster.plugin(&["activate", "web", "--force"]).await;
    assert!(
        run.failed()
            .contains("selects no pods besides kubervisor/traffic"),
        "{run:#?}"
    );
}
}

on_both_backends! {
async fn missing_service_is_named_with_its_resource(backend: Backend) {
    let cluster = Cluster::start(backend).await;
    let ns = cluster.ns.as_str();
    cluster.kvs(ns, "web", "gone").await;
    for command in ["activate", "deactivate"] {
        let run = cluster.plugin(&[command, "web"]).await;
        assert_eq!(
            run.failed(),
            format!(
                "error: service \"gone\" (spec.service of kubervisorservice \"web\") not found in namespace \"{ns}\"\n"
            )
        );
    }
    let run = cluster.plugin(&["describe", "web"]).await;
    assert!(
        run.ok().contains("Service:      gone (not found)"),
        "{run:#?}"
    );
}
}

/// kubesim only: the shared real control plane has the CRD, which other tests running at
/// the same time need.
#[tokio::test]
async fn a_missing_crd_says_how_to_install_it() {
    let cluster = Cluster::bare(Backend::Kubesim).await;
    let expected = "error: the KubervisorService CRD is not installed in this cluster (kubervisor crd | kubectl apply -f -)\n";
    for args in [
        &[][..],
        &["-A"][..],
        &["describe", "web"][..],
        &["activate", "web"][..],
        &["deactivate", "web"][..],
    ] {
        let run = cluster.plugin(args).await;
        assert_eq!(run.failed(), expected, "{args:?}");
    }
}

on_both_backends! {
async fn a_missing_resource_is_named_with_its_namespace(backend: Backend) {
    let mut cluster = Cluster::start(backend).await;
    let shop = cluster.namespace("shop").await;
    let run = cluster.plugin(&["describe", "nope"]).await;
    assert_eq!(
        run.failed(),
        format!(
            "error: kubervisorservice \"nope\" not found in namespace \"{}\"\n",
            cluster.ns
        )
    );
    for command in ["activate", "deactivate"] {
        let run = cluster.plugin(&[command, "nope", "-n", &shop]).await;
        assert_eq!(
            run.failed(),
            format!("error: kubervisorservice \"nope\" not found in namespace \"{shop}\"\n")
        );
    }
}
}

// The tests below need no cluster at all: one run says everything.

#[tokio::test]
async fn an_unreachable_cluster_is_one_line_naming_the_server() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    for args in [
        &["list"][..],
        &["describe", "web"][..],
        &["activate", "web"][..],
    ] {
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        let run = run(PLUGIN, &all, dir.path(), &[]).await;
        assert_eq!(
            run.failed(),
            format!(
                "error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}: connection refused\n"
            ),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn no_kubeconfig_at_all_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(PLUGIN, &[], dir.path(), &[]).await;
    assert!(run.failed().contains("no kubeconfig found"), "{run:#?}");
    let missing = dir.path().join("missing");
    let run = harness::run(
        PLUGIN,
        &["--kubeconfig", missing.to_str().unwrap()],
        dir.path(),
        &[],
    )
    .await;
    assert!(
        run.failed().starts_with("error: cannot read kubeconfig "),
        "{run:#?}"
    );
}

#[tokio::test]
async fn usage_errors_exit_1_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(PLUGIN, &["describe"], dir.path(), &[]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let run = harness::run(PLUGIN, &["-o", "xml"], dir.path(), &[]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    let run = harness::run(PLUGIN, &["--help"], dir.path(), &[]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains("kubectl kubervisor"), "{run:#?}");
}

on_both_backends! {
async fn kubectl_finds_the_plugin_on_path_and_passes_its_arguments(backend: Backend) {
    let kubectl = require_kubectl();
    let cluster = guarded_web(backend, false).await;
    let ns = cluster.ns.as_str();
    cluster
        .pod(
            ns,
            "web-1",
            json!({"app": "web", "kubervisor/traffic": "yes"}),
            json!({}),
        )
        .await;
    let plugin_dir = std::path::Path::new(PLUGIN).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(plugin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let env = [
        ("PATH", path.to_str().unwrap()),
        ("KUBECONFIG", cluster.kubeconfig.to_str().unwrap()),
    ];
    let kubectl = kubectl.to_str().unwrap();
    let home = cluster.dir.path();

    let run = harness::run(kubectl, &["kubervisor", "list"], home, &env).await;
    assert_eq!(
        without_age(run.ok(), 6),
        [
            strings(&["NAME", "SERVICE", "STATE", "MANAGED", "BROKEN", "PAUSED"]),
            strings(&["web", "web", "Running", "5", "1", "1"]),
        ],
        "{run:#?}"
    );
    // Bare, as the README shows it: the same list.
    let bare = harness::run(kubectl, &["kubervisor"], home, &env).await;
    assert_eq!(without_age(bare.ok(), 6), without_age(run.ok(), 6), "{bare:#?}");
    let run = harness::run(kubectl, &["kubervisor", "describe", "web"], home, &env).await;
    assert!(run.ok().contains("web-1"), "{run:#?}");
    let run = harness::run(kubectl, &["kubervisor", "activate", "web"], home, &env).await;
    assert!(run.ok().contains("activated"), "{run:#?}");
    assert_eq!(
        cluster
            .selector(ns, "web")
            .await
            .get("kubervisor/traffic")
            .map(String::as_str),
        Some("yes")
    );
    let run = harness::run(kubectl, &["kubervisor", "describe", "nope"], home, &env).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stderr.contains("kubervisorservice \"nope\" not found"),
        "{run:#?}"
    );
}
}

/// A pod's `kubervisor/traffic` label.
async fn traffic_of(cluster: &Cluster, pod: &str) -> Option<String> {
    let pod: k8s_openapi::api::core::v1::Pod =
        kube::Api::namespaced(cluster.client.clone(), &cluster.ns)
            .get(pod)
            .await
            .unwrap();
    pod.metadata
        .labels
        .unwrap_or_default()
        .get("kubervisor/traffic")
        .cloned()
}

on_both_backends! {
async fn manual_actions_move_one_pod_and_never_break_the_floor_unless_forced(backend: Backend) {
    let cluster = guarded_web(backend, true).await;
    let ns = cluster.ns.as_str();
    for name in ["web-a", "web-b", "web-c"] {
        cluster
            .pod(ns, name, json!({"app": "web", "kubervisor/traffic": "yes", "kubervisor/name": "web"}), json!({}))
            .await;
    }
    cluster.pod(ns, "stray", json!({"app": "web"}), json!({})).await;
    cluster.wait_ready(ns, &["web-a", "web-b", "web-c"]).await;

    // 3 serve, floor 2 (minPodsAvailableCount): one may go.
    let run = cluster.plugin(&["eject", "web-a"]).await;
    assert_eq!(
        run.ok(),
        "pod \"web-a\" ejected by hand: 3 of the pods of kubervisorservice \"web\" served before, floor 2\n"
    );
    assert_eq!(traffic_of(&cluster, "web-a").await.as_deref(), Some("no"));
    let pod: k8s_openapi::api::core::v1::Pod =
        kube::Api::namespaced(cluster.client.clone(), ns).get("web-a").await.unwrap();
    assert_eq!(pod.metadata.labels.as_ref().unwrap()["kubervisor/strategy"], "manual");
    assert!(pod.metadata.annotations.as_ref().unwrap().contains_key("breaker/breakAt"));

    // A second one would leave 1 < 2: refused, nothing written; --force does it.
    let refused = cluster.plugin(&["eject", "web-b"]).await;
    assert!(
        refused.failed().contains("2 of the pods serve and the floor is 2") && refused.stderr.contains("--force"),
        "{refused:#?}"
    );
    assert_eq!(traffic_of(&cluster, "web-b").await.as_deref(), Some("yes"));
    let refused = cluster.plugin(&["pause", "web-b"]).await;
    assert!(refused.failed().contains("floor is 2"), "{refused:#?}");

    // Back, parked, back again.
    assert!(cluster.plugin(&["restore", "web-a"]).await.ok().contains("restored by hand"));
    assert_eq!(traffic_of(&cluster, "web-a").await.as_deref(), Some("yes"));
    let refused = cluster.plugin(&["restore", "web-a"]).await;
    assert!(refused.failed().contains("has label kubervisor/traffic=yes; restore needs no"), "{refused:#?}");
    assert!(cluster.plugin(&["pause", "web-a"]).await.ok().contains("paused by hand"));
    assert_eq!(traffic_of(&cluster, "web-a").await.as_deref(), Some("pause"));
    assert!(cluster.plugin(&["unpause", "web-a"]).await.ok().contains("unpaused by hand"));
    assert_eq!(traffic_of(&cluster, "web-a").await.as_deref(), Some("yes"));

    cluster.plugin(&["eject", "web-a"]).await.ok();
    assert!(cluster.plugin(&["eject", "web-b", "--force"]).await.ok().contains("(forced)"));
    assert_eq!(traffic_of(&cluster, "web-b").await.as_deref(), Some("no"));

    // Pods Kubervisor does not manage are refused by name.
    let refused = cluster.plugin(&["eject", "stray"]).await;
    assert!(refused.failed().contains("pod \"stray\" is not managed by a KubervisorService"), "{refused:#?}");
    let refused = cluster.plugin(&["eject", "ghost"]).await;
    assert!(refused.failed().contains("pod \"ghost\" not found"), "{refused:#?}");

    // Every action is recorded as an Event on its pod.
    let events: Vec<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(cluster.client.clone(), ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
    let reasons: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("kubervisor.k8s.io/kubectl-kubervisor"))
        .map(|e| (e.regarding.as_ref().and_then(|r| r.name.clone()).unwrap_or_default(), e.reason.clone().unwrap_or_default()))
        .collect();
    for expected in [
        ("web-a", "ManualEject"),
        ("web-a", "ManualRestore"),
        ("web-a", "ManualPause"),
        ("web-a", "ManualUnpause"),
        ("web-b", "ManualEject"),
    ] {
        assert!(
            reasons.iter().any(|(p, r)| p == expected.0 && r == expected.1),
            "{expected:?} missing from {reasons:?}"
        );
    }
}
}
