//! The deployment and monitoring configuration, checked against the code it configures.
//!
//! - `docker-compose.yml` cannot run here (no Docker engine), so it is parsed: every environment variable it
//!   gives a service must be one that service reads (collected from the Rust sources, so this cannot drift
//!   from the code), its ports, healthchecks and Prometheus scrape targets must agree with the services'
//!   `HTTP_ADDR`, and the infrastructure it wires (Kafka listeners, the MongoDB replica set, Jaeger's OTLP
//!   port, the files it mounts) must fit together.
//! - The Prometheus configs must load the rule files that exist; every alert needs a severity, a summary, a
//!   description, a runbook and a promtool test that makes it fire; the Grafana dashboards must be valid and
//!   show what operators need.
//! - Every metric named in a rule or a dashboard must be in the services' metrics contract ([`CONTRACT`]), and,
//!   against the real binaries, exported by the services that should export it.
//! - A real Prometheus (started by `make test`; `PROMETHEUS_URL`, default `http://127.0.0.1:9090`) scrapes a
//!   stack of the real binaries registered through its file_sd directory, evaluates every dashboard query
//!   and the rules, and shows a running saga in the sagas-by-state metric.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;
use tests::stack::{Options, SERVICES, Stack};
use tests::{eventually, repo_dir};

// ------------------------------------------------------------------------------------------------------
// The metrics contract
// ------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which services export a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exporter {
    Orchestrator,
    Participants,
    Every,
}

impl Exporter {
    fn includes(self, service: &str) -> bool {
        match self {
            Exporter::Orchestrator => service == "orchestrator",
            Exporter::Participants => service != "orchestrator",
            Exporter::Every => true,
        }
    }
}

/// The metric families the services export (names as registered; prometheus-client adds `_total` to
/// counters, histograms have `_bucket`, `_sum` and `_count`).
const CONTRACT: &[(&str, Kind, Exporter)] = &[
    ("saga_started", Kind::Counter, Exporter::Orchestrator),
    ("saga_completed", Kind::Counter, Exporter::Orchestrator),
    ("saga_compensated", Kind::Counter, Exporter::Orchestrator),
    ("saga_failed", Kind::Counter, Exporter::Orchestrator),
    ("saga_resolved", Kind::Counter, Exporter::Orchestrator),
    ("saga_in_state", Kind::Gauge, Exporter::Orchestrator),
    ("saga_oldest_age_seconds", Kind::Gauge, Exporter::Orchestrator),
    ("saga_step_duration_seconds", Kind::Histogram, Exporter::Orchestrator),
    ("saga_order_duration_seconds", Kind::Histogram, Exporter::Orchestrator),
    ("saga_step_retries", Kind::Counter, Exporter::Orchestrator),
    ("saga_step_timeouts", Kind::Counter, Exporter::Orchestrator),
    ("saga_fenced_messages", Kind::Counter, Exporter::Orchestrator),
    ("saga_dead_letters", Kind::Counter, Exporter::Orchestrator),
    ("saga_transitions", Kind::Counter, Exporter::Orchestrator),
    ("saga_published_messages", Kind::Counter, Exporter::Orchestrator),
    ("saga_outbox_backlog", Kind::Gauge, Exporter::Orchestrator),
    ("saga_pii_purged", Kind::Counter, Exporter::Orchestrator),
    ("kafka_consumer_lag", Kind::Gauge, Exporter::Every),
    ("kafka_produce_errors", Kind::Counter, Exporter::Every),
    ("http_request_duration_seconds", Kind::Histogram, Exporter::Every),
    ("participant_commands", Kind::Counter, Exporter::Participants),
    ("participant_dead_letters", Kind::Counter, Exporter::Participants),
    ("participant_processing_seconds", Kind::Histogram, Exporter::Participants),
    ("participant_transient_errors", Kind::Counter, Exporter::Participants),
];

/// The sample names a family of `kind` shows in the exposition format.
fn sample_names(name: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Counter => vec![format!("{name}_total")],
        Kind::Gauge => vec![name.to_owned()],
        Kind::Histogram => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{name}{s}")).collect(),
    }
}

/// Every sample name of the contract, with the services that export it.
fn contract_samples() -> BTreeMap<String, Exporter> {
    CONTRACT
        .iter()
        .flat_map(|&(name, kind, exporter)| sample_names(name, kind).into_iter().map(move |s| (s, exporter)))
        .collect()
}

/// The prefixes of the services' own metrics: identifiers with them in PromQL are checked.
const PREFIXES: [&str; 4] = ["saga_", "participant_", "kafka_", "http_"];

/// The metric names of the services that a PromQL expression uses: identifiers starting with one of
/// [`PREFIXES`], outside string literals.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut ident = String::new();
    let mut flush = |ident: &mut String| {
        if PREFIXES.iter().any(|p| ident.starts_with(p)) {
            names.insert(ident.clone());
        }
        ident.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                flush(&mut ident);
                // Skip the literal, with its escapes.
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => ident.push(c),
            _ => flush(&mut ident),
        }
    }
    flush(&mut ident);
    names
}

/// Names a `/metrics` page exports: every sample's name, and for every `# TYPE` line the sample names of
/// that family (with prometheus-client, a family shows only once it has a series).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            let kind = match kind {
                "counter" => Kind::Counter,
                "histogram" => Kind::Histogram,
                _ => Kind::Gauge,
            };
            names.extend(sample_names(name, kind));
            names.insert(name.to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

// ------------------------------------------------------------------------------------------------------
// Files
// ------------------------------------------------------------------------------------------------------

fn path(relative: &str) -> PathBuf {
    repo_dir().join(relative)
}

fn read(relative: &str) -> String {
    let file = path(relative);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

/// A YAML file with its merge keys (`<<: *anchor`) applied, as docker compose reads it.
fn yaml(relative: &str) -> Yaml {
    let mut value: Yaml =
        serde_yaml_ng::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("{relative}: merge keys: {e}"));
    value
}

fn json_file(relative: &str) -> Json {
    serde_json::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid JSON: {e}"))
}

/// Files directly in `dir` (relative to the repository) whose names end with `suffix`, as relative paths.
fn files_in(dir: &str, suffix: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(path(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    files
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
            let entry = entry.expect("a directory entry").path();
            if entry.is_dir() {
                pending.push(entry);
            } else if entry.extension().is_some_and(|e| e == "rs") {
                files.push(entry);
            }
        }
    }
    files
}

fn text(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn strings(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Sequence(items) => items.iter().map(text).collect(),
        Yaml::Null => Vec::new(),
        scalar => vec![text(scalar)],
    }
}

fn keys(value: &Yaml) -> Vec<String> {
    value.as_mapping().map(|m| m.keys().map(text).collect()).unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------------
// What the services read
// ------------------------------------------------------------------------------------------------------

/// Environment variables read in `files`: only `platform::config` touches the environment, and every read
/// names its variable as the first argument of a call, as in `config::string("HTTP_ADDR", …)`,
/// `config::parsed::<u64>("X", …)`, `config::optional("X")`, `MongoSettings::from_env("MONGODB_DATABASE", …)`
/// or a local helper such as `millis("SAGA_STEP_TIMEOUT_MS", …)`. So: every upper-case literal with an
/// underscore that is the first argument of a call.
fn env_reads(files: &[PathBuf]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(file).expect("read a source file");
        let mut rest = source.as_str();
        // A call's first argument as a string literal: `name("VAR"`, also when rustfmt breaks the line after `(`.
        while let Some(at) = rest.find('(') {
            let before = rest[..at].chars().next_back();
            let after = rest[at + 1..].trim_start();
            rest = &rest[at + 1..];
            let Some(literal) = after.strip_prefix('"') else { continue };
            let Some(end) = literal.find('"') else { break };
            let name = &literal[..end];
            let called = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '>');
            let env_like = name.contains('_')
                && name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if called && env_like {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// Variables read by a library rather than by `platform::config`: the OpenTelemetry SDK and its OTLP exporter
/// read the standard `OTEL_*` variables themselves. Accepted only while `platform` depends on the exporter.
const OTEL_SDK_VARS: [&str; 7] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// The participants' domains: each reads its own settings under `participants/src/<name>/`.
const PARTICIPANTS: [&str; 3] = ["inventory", "payment", "shipping"];

/// The environment variables `binary` reads: the platform's (Kafka, database, logging, tracing, …), plus the
/// orchestrator's, or the participant runtime's and the participant's own domain's (not the other domains').
fn accepted_env(binary: &str) -> BTreeSet<String> {
    let root = repo_dir();
    let mut names = env_reads(&rust_files(&root.join("platform/src")));
    let platform_manifest = read("platform/Cargo.toml");
    if platform_manifest.lines().any(|l| l.trim_start().starts_with("opentelemetry-otlp")) {
        names.extend(OTEL_SDK_VARS.iter().map(|s| (*s).to_owned()));
    }
    match binary {
        "saga-topics" => {}
        "orchestrator" => names.extend(env_reads(&rust_files(&root.join("orchestrator/src")))),
        participant if PARTICIPANTS.contains(&participant) => {
            let src = root.join("participants/src");
            let others: Vec<PathBuf> =
                PARTICIPANTS.iter().filter(|p| **p != participant).map(|p| src.join(p)).collect();
            let files: Vec<PathBuf> =
                rust_files(&src).into_iter().filter(|f| !others.iter().any(|other| f.starts_with(other))).collect();
            names.extend(env_reads(&files));
        }
        other => panic!("unknown binary {other}"),
    }
    names
}

/// The port a service listens on by default (its `HTTP_ADDR` default in the code).
fn default_port(service: &str) -> u16 {
    let (file, marker) = if service == "orchestrator" {
        ("orchestrator/src/config.rs".to_owned(), "config::string(\"HTTP_ADDR\", \"")
    } else {
        (format!("participants/src/{service}/mod.rs"), "DEFAULT_HTTP_ADDR: &'static str = \"")
    };
    let source = read(&file);
    let at = source.find(marker).unwrap_or_else(|| panic!("{file} no longer has `{marker}`: update this test"));
    let addr = &source[at + marker.len()..];
    let addr = &addr[..addr.find('"').expect("a closing quote")];
    port_of(addr)
}

/// The port of `host:port`, `scheme://host:port/…`.
fn port_of(addr: &str) -> u16 {
    host_port(addr).1
}

fn host_port(addr: &str) -> (String, u16) {
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let addr = addr.split(['/', '?']).next().expect("an authority");
    let (host, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("{addr:?} has no port"));
    (host.to_owned(), port.parse().unwrap_or_else(|_| panic!("{addr:?}: the port is not a number")))
}

// ------------------------------------------------------------------------------------------------------
// docker-compose.yml
// ------------------------------------------------------------------------------------------------------

struct Compose(Yaml);

impl Compose {
    fn load() -> Self {
        let compose = yaml("docker-compose.yml");
        assert!(compose["services"].as_mapping().is_some(), "docker-compose.yml has no services");
        Self(compose)
    }

    fn service(&self, name: &str) -> &Yaml {
        let service = &self.0["services"][name];
        assert!(service.as_mapping().is_some(), "docker-compose.yml has no service {name}");
        service
    }

    fn names(&self) -> Vec<String> {
        keys(&self.0["services"])
    }

    /// A service's environment (map or `KEY=value` list form).
    fn env(&self, name: &str) -> BTreeMap<String, String> {
        match &self.service(name)["environment"] {
            Yaml::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
            Yaml::Sequence(items) => items
                .iter()
                .map(|item| {
                    let item = text(item);
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// One variable of a service's environment; panics naming it when it is missing.
    fn var(&self, service: &str, name: &str) -> String {
        let env = self.env(service);
        env.get(name).cloned().unwrap_or_else(|| panic!("{service} sets no {name} in docker-compose.yml"))
    }

    fn command(&self, name: &str) -> Vec<String> {
        match &self.service(name)["command"] {
            Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            other => strings(other),
        }
    }

    /// Published ports as (host port, container port).
    fn ports(&self, name: &str) -> Vec<(u16, u16)> {
        strings(&self.service(name)["ports"])
            .iter()
            .map(|spec| {
                let spec = spec.split('/').next().expect("a port spec");
                let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
                let parse = |p: &str| p.parse::<u16>().unwrap_or_else(|_| panic!("{name}: bad port spec {spec:?}"));
                match parts.as_slice() {
                    [container, host, ..] => (parse(host), parse(container)),
                    [container] => (0, parse(container)),
                    [] => panic!("{name}: empty port spec"),
                }
            })
            .collect()
    }

    /// Bind mounts as (container path, host path relative to the repository, without `./`).
    fn mounts(&self, name: &str) -> Vec<(String, String)> {
        strings(&self.service(name)["volumes"])
            .iter()
            .filter(|spec| spec.starts_with("./"))
            .map(|spec| {
                let mut parts = spec.split(':');
                let host = parts.next().expect("a host path").trim_start_matches("./").trim_end_matches('/');
                let container = parts.next().unwrap_or_else(|| panic!("{name}: mount {spec:?} has no target"));
                (container.trim_end_matches('/').to_owned(), host.to_owned())
            })
            .collect()
    }

    /// The repository path that `container_path` of service `name` shows, through its bind mounts.
    fn host_path(&self, name: &str, container_path: &str) -> String {
        self.mounts(name)
            .into_iter()
            .filter(|(target, _)| container_path == target || container_path.starts_with(&format!("{target}/")))
            .max_by_key(|(target, _)| target.len())
            .map(|(target, host)| format!("{host}{}", &container_path[target.len()..]))
            .unwrap_or_else(|| panic!("{name}: {container_path} is not inside any bind mount"))
    }

    fn healthcheck(&self, name: &str) -> String {
        strings(&self.service(name)["healthcheck"]["test"]).join(" ")
    }

    fn depends_on(&self, name: &str) -> Vec<String> {
        match &self.service(name)["depends_on"] {
            Yaml::Mapping(_) => keys(&self.service(name)["depends_on"]),
            other => strings(other),
        }
    }
}

/// The services of this repository that compose runs from the image, with the binary each runs.
const COMPOSE_BINARIES: [(&str, &str); 5] = [
    ("topics", "saga-topics"),
    ("orchestrator", "orchestrator"),
    ("inventory", "inventory"),
    ("payment", "payment"),
    ("shipping", "shipping"),
];

#[test]
fn compose_services_set_only_variables_their_binaries_read() {
    let compose = Compose::load();
    let mut unknown = Vec::new();
    for (service, binary) in COMPOSE_BINARIES {
        assert_eq!(compose.command(service).first().map(String::as_str), Some(binary), "{service}'s command");
        let accepted = accepted_env(binary);
        for name in compose.env(service).keys() {
            if !accepted.contains(name) {
                unknown.push(format!("{service}: {name}"));
            }
        }
    }
    // The image's own defaults too.
    let dockerfile = read("Dockerfile");
    let accepted = accepted_env("orchestrator");
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        in_env = line.starts_with("ENV ") || (in_env && !line.is_empty() && !line.starts_with('#'));
        if in_env {
            for pair in line.trim_start_matches("ENV ").split_whitespace() {
                if let Some((name, _)) = pair.split_once('=')
                    && !accepted.contains(name)
                {
                    unknown.push(format!("Dockerfile: {name}"));
                }
            }
            in_env = line.ends_with('\\');
        }
    }
    assert!(
        unknown.is_empty(),
        "variables no service reads (a typo, or a setting that was renamed or removed in the code): {unknown:?}"
    );
}

#[test]
fn compose_ports_healthchecks_and_scrape_targets_match_each_services_http_addr() {
    let compose = Compose::load();
    let prometheus = yaml("ops/prometheus/prometheus.compose.yml");
    let targets = scrape_targets(&prometheus);
    for service in SERVICES {
        let port = default_port(service);
        let env = compose.env(service);
        let addr = env.get("HTTP_ADDR").unwrap_or_else(|| panic!("{service} has no HTTP_ADDR in compose"));
        let (host, listen) = host_port(addr);
        assert_eq!(host, "0.0.0.0", "{service} must listen on every interface inside its container");
        assert_eq!(listen, port, "{service}: HTTP_ADDR {addr} differs from the service's default port {port}");
        assert!(
            compose.ports(service).contains(&(port, port)),
            "{service} must publish {port}:{port} (the README's address), has {:?}",
            compose.ports(service)
        );
        let check = compose.healthcheck(service);
        let image_has_curl = read("Dockerfile").contains(" curl");
        assert!(!check.contains("curl") || image_has_curl, "{service}'s healthcheck runs curl, which the image lacks");
        assert!(
            check.contains(&format!("http://127.0.0.1:{port}/ready"))
                || check.contains(&format!("http://localhost:{port}/ready")),
            "{service}'s healthcheck must GET /ready on port {port}: {check:?}"
        );
        assert!(
            targets.contains(&(service.to_owned(), format!("{service}:{port}"))),
            "prometheus.compose.yml must scrape {service}:{port} with service=\"{service}\": {targets:?}"
        );
    }
    assert_eq!(targets.len(), SERVICES.len(), "exactly the four services are scraped: {targets:?}");
}

#[test]
fn compose_wires_kafka_mongodb_jaeger_and_the_image_together() {
    let compose = Compose::load();
    let services = compose.names();
    let dockerfile = read("Dockerfile");

    // Kafka: KRaft, and the bootstrap servers are one of its advertised listeners.
    let roles = compose.var("kafka", "KAFKA_PROCESS_ROLES");
    assert!(roles.contains("controller"), "Kafka runs in KRaft mode (its own controller): {roles}");
    assert_eq!(compose.var("kafka", "KAFKA_AUTO_CREATE_TOPICS_ENABLE"), "false", "as the local broker");
    let advertised: Vec<String> = compose
        .var("kafka", "KAFKA_ADVERTISED_LISTENERS")
        .split(',')
        .map(|l| l.split_once("://").expect("NAME://host:port").1.to_owned())
        .collect();

    // MongoDB: a single-node replica set whose name the services' URI carries.
    let mongo_command = compose.command("mongo");
    let repl_set = mongo_command
        .iter()
        .position(|a| a == "--replSet")
        .and_then(|i| mongo_command.get(i + 1))
        .expect("mongo runs with --replSet <name>");
    let init = compose.command("mongo-init").join(" ");
    assert!(
        init.contains("rs.initiate") && init.contains(&format!("_id: \"{repl_set}\"")),
        "mongo-init initiates {repl_set}"
    );
    assert!(compose.depends_on("mongo-init").contains(&"mongo".to_owned()));

    let jaeger_ports: Vec<u16> = compose.ports("jaeger").iter().map(|&(_, c)| c).collect();
    let mut databases = BTreeSet::new();
    for (service, binary) in COMPOSE_BINARIES {
        let bootstrap = &compose.var(service, "KAFKA_BOOTSTRAP_SERVERS");
        assert!(
            advertised.contains(bootstrap),
            "{service}: KAFKA_BOOTSTRAP_SERVERS={bootstrap} is not one of Kafka's advertised listeners {advertised:?}"
        );
        assert_eq!(host_port(bootstrap).0, "kafka", "{service} reaches Kafka by its service name");
        assert!(compose.depends_on(service).iter().any(|d| d == "kafka" || d == "topics"), "{service} waits for Kafka");
        assert!(
            dockerfile.contains(&format!(" {binary} ")) || dockerfile.contains(&format!(" {binary};")),
            "the Dockerfile does not build and copy {binary}"
        );
        assert_eq!(
            text(&compose.service(service)["image"]),
            text(&compose.service("orchestrator")["image"]),
            "{service}: one image for all"
        );
        assert_eq!(
            text(&compose.service(service)["build"]["dockerfile"]),
            "Dockerfile",
            "{service} is built from the Dockerfile"
        );
        if service == "topics" {
            continue;
        }
        let uri = &compose.var(service, "MONGODB_URI");
        assert_eq!(host_port(uri), ("mongo".to_owned(), 27017), "{service}: MONGODB_URI={uri}");
        assert!(
            uri.contains(&format!("replicaSet={repl_set}")),
            "{service}: MONGODB_URI={uri} must name replica set {repl_set}"
        );
        let database = compose.var(service, "MONGODB_DATABASE");
        assert!(databases.insert(database), "{service} shares a database with another service");
        let dependencies = compose.depends_on(service);
        assert!(
            dependencies.contains(&"mongo-init".to_owned()) && dependencies.contains(&"topics".to_owned()),
            "{service}: {dependencies:?}"
        );
        let otlp = &compose.var(service, "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(host_port(otlp), ("jaeger".to_owned(), 4318), "{service}: traces go to Jaeger's OTLP HTTP port");
        assert!(jaeger_ports.contains(&4318), "jaeger must expose OTLP HTTP (4318)");
    }
    for service in &services {
        for dependency in compose.depends_on(service) {
            assert!(services.contains(&dependency), "{service} depends on {dependency}, which is no service");
        }
        for (_, host) in compose.mounts(service) {
            assert!(path(&host).exists(), "{service} mounts ./{host}, which does not exist");
        }
    }
    for required in ["kafka", "kafka-ui", "mongo", "prometheus", "grafana", "jaeger"] {
        assert!(services.contains(&required.to_owned()), "docker-compose.yml has no {required}");
    }
    assert!(advertised.contains(&compose.var("kafka-ui", "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS")), "Kafka UI's cluster");
}

#[test]
fn compose_prometheus_and_grafana_mount_the_repositorys_config() {
    let compose = Compose::load();
    // Prometheus: its config file is prometheus.compose.yml and its rule files are the repository's rules.
    let args = compose.command("prometheus").join(" ");
    let config_in_container = args
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml");
    assert_eq!(compose.host_path("prometheus", config_in_container), "ops/prometheus/prometheus.compose.yml");
    let config = yaml("ops/prometheus/prometheus.compose.yml");
    let config_dir = Path::new(config_in_container).parent().expect("a directory").to_string_lossy().into_owned();
    let mut loaded = BTreeSet::new();
    for pattern in strings(&config["rule_files"]) {
        let in_container = if pattern.starts_with('/') { pattern.clone() } else { format!("{config_dir}/{pattern}") };
        loaded.extend(glob(&compose.host_path("prometheus", &in_container)));
    }
    assert_eq!(
        loaded,
        files_in("ops/prometheus/rules", ".yml").into_iter().collect(),
        "compose's Prometheus loads every rule file"
    );

    // Grafana: provisioning mounted where Grafana reads it, dashboards where the provider points, data source
    // at the prometheus service.
    assert_eq!(compose.host_path("grafana", "/etc/grafana/provisioning"), "ops/grafana/provisioning");
    let providers = yaml("ops/grafana/provisioning/dashboards/dashboards.yml");
    let dashboards_path = text(&providers["providers"][0]["options"]["path"]);
    let dashboards_dir = compose.host_path("grafana", &dashboards_path);
    assert_eq!(dashboards_dir, "ops/grafana/dashboards");
    assert!(!files_in(&dashboards_dir, ".json").is_empty(), "no dashboards in {dashboards_dir}");
    let home = &compose.var("grafana", "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH");
    assert!(path(&compose.host_path("grafana", home)).is_file(), "the home dashboard {home} is not a file");
    let datasources = yaml("ops/grafana/provisioning/datasources/datasources.yml");
    let prometheus = datasources["datasources"]
        .as_sequence()
        .expect("datasources")
        .iter()
        .find(|d| text(&d["type"]) == "prometheus")
        .expect("a Prometheus data source");
    let (host, port) = host_port(&text(&prometheus["url"]));
    assert_eq!(host, "prometheus");
    assert!(compose.ports("prometheus").iter().any(|&(_, c)| c == port), "Prometheus listens on {port} in compose");
    let jaeger =
        datasources["datasources"].as_sequence().expect("datasources").iter().find(|d| text(&d["type"]) == "jaeger");
    if let Some(jaeger) = jaeger {
        let (host, port) = host_port(&text(&jaeger["url"]));
        assert_eq!(host, "jaeger");
        assert!(compose.ports("jaeger").iter().any(|&(_, c)| c == port), "Jaeger's UI port {port} in compose");
    }
}

/// Files matching `pattern` (relative to the repository; `*` only in the last component).
fn glob(pattern: &str) -> BTreeSet<String> {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or((".", pattern));
    let (prefix, suffix) = file.split_once('*').unwrap_or((file, ""));
    files_in(dir, suffix)
        .into_iter()
        .filter(|f| {
            f.rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with(prefix) && name.len() >= prefix.len() + suffix.len())
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------------
// Prometheus: configs and rules
// ------------------------------------------------------------------------------------------------------

/// (service label, target) of every static target of a Prometheus config.
fn scrape_targets(config: &Yaml) -> BTreeSet<(String, String)> {
    let mut targets = BTreeSet::new();
    for job in config["scrape_configs"].as_sequence().expect("scrape_configs") {
        for group in job["static_configs"].as_sequence().into_iter().flatten() {
            let service = text(&group["labels"]["service"]);
            for target in strings(&group["targets"]) {
                targets.insert((service.clone(), target));
            }
        }
    }
    targets
}

#[test]
fn the_local_prometheus_config_scrapes_the_services_and_loads_every_rule_file() {
    let config = yaml("ops/prometheus/prometheus.yml");
    let expected: BTreeSet<(String, String)> =
        SERVICES.iter().map(|s| ((*s).to_owned(), format!("127.0.0.1:{}", default_port(s)))).collect();
    assert_eq!(scrape_targets(&config), expected, "ops/prometheus/prometheus.yml scrapes `make up`'s services");
    let mut loaded = BTreeSet::new();
    for pattern in strings(&config["rule_files"]) {
        loaded.extend(glob(&format!("ops/prometheus/{pattern}")));
    }
    let rules: BTreeSet<String> = files_in("ops/prometheus/rules", ".yml").into_iter().collect();
    assert!(!rules.is_empty(), "no rule files");
    assert_eq!(loaded, rules, "every rule file is loaded");
    // ops/prometheus/prometheus.sh (which `make test` runs) generates its config with the same jobs and rules.
    let script = read("ops/prometheus/prometheus.sh");
    assert!(script.contains("$PROM_DIR/rules/*.yml") && script.contains("file_sd_configs"), "prometheus.sh's config");
    for service in SERVICES {
        let var = format!("{}_PORT:-{}", service.to_uppercase(), default_port(service));
        assert!(script.contains(&var), "prometheus.sh scrapes {service} on ${{{var}}}");
    }
}

struct Rule {
    file: String,
    alert: String,
    expr: String,
    severity: String,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for file in files_in("ops/prometheus/rules", ".yml") {
        let doc = yaml(&file);
        for group in doc["groups"].as_sequence().unwrap_or_else(|| panic!("{file} has no groups")) {
            for rule in group["rules"].as_sequence().unwrap_or_else(|| panic!("{file}: a group without rules")) {
                let annotations = rule["annotations"]
                    .as_mapping()
                    .map(|m| m.iter().map(|(k, v)| (text(k), text(v))).collect())
                    .unwrap_or_default();
                rules.push(Rule {
                    file: file.clone(),
                    alert: text(&rule["alert"]),
                    expr: text(&rule["expr"]),
                    severity: text(&rule["labels"]["severity"]),
                    annotations,
                });
            }
        }
    }
    rules
}

#[test]
fn every_alert_has_a_severity_a_runbook_and_a_test_that_makes_it_fire() {
    let rules = rules();
    let tests: Vec<(String, String)> =
        files_in("ops/prometheus/tests", ".yml").into_iter().map(|f| (f.clone(), read(&f))).collect();
    assert!(!tests.is_empty(), "no promtool tests in ops/prometheus/tests");
    let mut names = BTreeSet::new();
    for rule in &rules {
        let alert = &rule.alert;
        assert!(!alert.is_empty(), "{}: a recording rule or an alert without a name; only alerts live here", rule.file);
        assert!(names.insert(alert.clone()), "alert {alert} is defined twice");
        assert!(["critical", "warning"].contains(&rule.severity.as_str()), "{alert}: severity {:?}", rule.severity);
        for key in ["summary", "description", "runbook"] {
            let value = rule.annotations.get(key).map_or("", |v| v.trim());
            assert!(value.len() >= 20, "{alert}: annotation {key} is missing or too short to help: {value:?}");
        }
        let firing = format!("alertname=\"{alert}\", alertstate=\"firing\"");
        assert!(
            tests.iter().any(|(_, t)| t.contains(&firing)),
            "{alert} has no promtool test in ops/prometheus/tests expecting it to fire ({firing})"
        );
        let file_name = rule.file.rsplit('/').next().expect("a file name");
        assert!(tests.iter().any(|(_, t)| t.contains(&format!("../rules/{file_name}"))), "no test loads {}", rule.file);
    }
    for wanted in [
        "SagaStuck",
        "SagaParked",
        "SagaDeadLettersGrowing",
        "ParticipantDeadLettersGrowing",
        "KafkaConsumerLagHigh",
        "HttpErrorRateHigh",
        "ParticipantTransientFailuresHigh",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}");
    }
}

// ------------------------------------------------------------------------------------------------------
// Grafana
// ------------------------------------------------------------------------------------------------------

struct Dashboard {
    file: String,
    json: Json,
}

fn dashboards() -> Vec<Dashboard> {
    files_in("ops/grafana/dashboards", ".json")
        .into_iter()
        .map(|file| Dashboard { json: json_file(&file), file })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL expression of the dashboards (targets and template variable queries), with its panel.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for dashboard in dashboards() {
        for panel in panels(&dashboard.json) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    exprs.push((format!("{} / {}", dashboard.file, panel["title"]), expr.to_owned()));
                }
            }
        }
        for variable in dashboard.json["templating"]["list"].as_array().into_iter().flatten() {
            let query = variable["query"].as_str().or_else(|| variable["query"]["query"].as_str());
            if let (Some(query), Some("query")) = (query, variable["type"].as_str()) {
                exprs.push((format!("{} / ${}", dashboard.file, variable["name"]), query.to_owned()));
            }
        }
    }
    exprs
}

#[test]
fn dashboards_are_valid_provisioned_grafana_json_and_show_what_operators_need() {
    let datasources = yaml("ops/grafana/provisioning/datasources/datasources.yml");
    let prometheus_uid = datasources["datasources"]
        .as_sequence()
        .expect("datasources")
        .iter()
        .find(|d| text(&d["type"]) == "prometheus")
        .map(|d| text(&d["uid"]))
        .expect("a Prometheus data source with a uid");
    let dashboards = dashboards();
    assert!(!dashboards.is_empty(), "no dashboards");
    let mut uids = BTreeSet::new();
    for Dashboard { file, json } in &dashboards {
        let uid = json["uid"].as_str().unwrap_or_default();
        assert!(!uid.is_empty() && uid.len() <= 40, "{file}: uid {uid:?}");
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} is used twice");
        assert!(json["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: no title");
        assert!(
            json["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}: schemaVersion {}",
            json["schemaVersion"]
        );
        let mut ids = BTreeSet::new();
        let all = panels(json);
        assert!(all.len() > 1, "{file}: no panels");
        for panel in all {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{file}: a panel without a title");
            assert!(
                ids.insert(panel["id"].as_u64().expect("a numeric panel id")),
                "{file}: panel id of {title} used twice"
            );
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().expect("gridPos.x"), grid["w"].as_u64().expect("gridPos.w"));
            assert!(
                x + w <= 24 && grid["h"].as_u64().is_some() && grid["y"].as_u64().is_some(),
                "{file}: {title}: gridPos {grid}"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(panel["datasource"]["uid"], prometheus_uid.as_str(), "{file}: {title}: data source");
            let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("{file}: {title} has no targets"));
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                assert!(
                    target["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{file}: {title}: a target without expr"
                );
                assert!(
                    ref_ids.insert(target["refId"].as_str().expect("refId").to_owned()),
                    "{file}: {title}: refId twice"
                );
                assert_eq!(
                    target["datasource"]["uid"],
                    prometheus_uid.as_str(),
                    "{file}: {title}: target's data source"
                );
            }
        }
    }
    // The views the issue asks for, recognised by their queries.
    let exprs: Vec<String> =
        dashboard_exprs().into_iter().map(|(_, e)| e.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    let has = |needles: &[&str]| exprs.iter().any(|e| needles.iter().all(|n| e.contains(n)));
    let mut missing = Vec::new();
    let mut want = |view: &str, present: bool| {
        if !present {
            missing.push(view.to_owned());
        }
    };
    want("sagas by state", has(&["saga_in_state", "by (state)"]));
    for counter in ["saga_started_total", "saga_completed_total", "saga_compensated_total"] {
        want(&format!("throughput: rate of {counter}"), has(&["rate(", counter]));
    }
    for q in ["0.5", "0.95", "0.99"] {
        want(
            &format!("p{q} per step"),
            has(&[&format!("histogram_quantile({q},"), "by (step, le)", "saga_step_duration_seconds_bucket"]),
        );
        want(
            &format!("p{q} end to end"),
            has(&[&format!("histogram_quantile({q},"), "saga_order_duration_seconds_bucket"]),
        );
    }
    want("consumer lag", has(&["kafka_consumer_lag"]));
    want("dead letters (orchestrator)", has(&["saga_dead_letters_total"]));
    want("dead letters (participants)", has(&["participant_dead_letters_total"]));
    want("stuck sagas", has(&["saga_oldest_age_seconds"]));
    want("HTTP errors", has(&["http_request_duration_seconds_count", "status=~\"5..\""]));
    want("HTTP latency", has(&["histogram_quantile(", "http_request_duration_seconds_bucket"]));
    assert!(missing.is_empty(), "the dashboards lack: {missing:?}");
}

// ------------------------------------------------------------------------------------------------------
// Metric names against the contract
// ------------------------------------------------------------------------------------------------------

/// Every service metric the rules and dashboards name, with where.
fn used_metrics() -> BTreeMap<String, Vec<String>> {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let sources = rules().into_iter().map(|r| (format!("{} / {}", r.file, r.alert), r.expr)).chain(dashboard_exprs());
    for (place, expr) in sources {
        for name in metric_names(&expr) {
            used.entry(name).or_default().push(place.clone());
        }
    }
    used
}

#[test]
fn metric_names_are_extracted_from_promql() {
    let names = metric_names(
        r#"sum by (topic) (increase(saga_dead_letters_total{topic!~"saga_x|http_y"}[$__rate_interval])) / on() kafka_consumer_lag"#,
    );
    assert_eq!(names, BTreeSet::from(["saga_dead_letters_total".to_owned(), "kafka_consumer_lag".to_owned()]));
    let exported = exported_names(
        "# TYPE saga_started counter\n# HELP x y\nhttp_request_duration_seconds_count{a=\"b\"} 1\n# EOF\n",
    );
    assert!(exported.contains("saga_started_total") && exported.contains("http_request_duration_seconds_count"));
}

/// The contract above is the code's: the orchestrator and the platform list what they export.
#[test]
fn the_contract_is_what_the_code_says_it_exports() {
    let code: BTreeSet<String> =
        orchestrator::metrics::EXPORTED.iter().chain(platform::metrics::EXPORTED).map(|n| (*n).to_owned()).collect();
    let contract: BTreeSet<String> = CONTRACT
        .iter()
        .filter(|(_, _, exporter)| *exporter != Exporter::Participants)
        .map(|&(name, kind, _)| if kind == Kind::Counter { format!("{name}_total") } else { name.to_owned() })
        .collect();
    assert_eq!(contract, code, "CONTRACT differs from orchestrator::metrics::EXPORTED and platform::metrics::EXPORTED");
}

#[test]
fn every_metric_the_rules_and_dashboards_name_is_in_the_contract_and_every_contract_metric_is_watched() {
    let contract = contract_samples();
    let used = used_metrics();
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !contract.contains_key(*name))
        .map(|(name, places)| format!("{name} (in {})", places.join(", ")))
        .collect();
    assert!(unknown.is_empty(), "metrics no service exports (see CONTRACT): {unknown:?}");
    let unwatched: Vec<&str> = CONTRACT
        .iter()
        .filter(|&&(name, kind, _)| !sample_names(name, kind).iter().any(|s| used.contains_key(s)))
        .map(|&(name, _, _)| name)
        .collect();
    assert!(unwatched.is_empty(), "exported metrics no dashboard or rule shows: {unwatched:?}");
}

// ------------------------------------------------------------------------------------------------------
// Against the running system
// ------------------------------------------------------------------------------------------------------

const FINISH: Duration = Duration::from_secs(90);

/// How long the services may take to export every series once an order went through: the consumer lag
/// comes from librdkafka's statistics, reported every few seconds.
const EXPORT_DEADLINE: Duration = Duration::from_secs(60);

/// The metric names of the rules and dashboards that `service` should export but does not (yet), with what
/// it does export; `None` when it exports them all.
async fn missing_metrics(stack: &Stack, service: &tests::stack::Service) -> Option<String> {
    let contract = contract_samples();
    let page = match stack.http.get(service.url("/metrics")).send().await {
        Ok(page) if page.status().is_success() => page.text().await.unwrap_or_default(),
        Ok(page) => return Some(format!("{}: GET /metrics answered {}", service.name, page.status())),
        Err(e) => return Some(format!("{}: GET /metrics failed: {e}", service.name)),
    };
    let exported = exported_names(&page);
    let missing: Vec<String> = used_metrics()
        .into_keys()
        .filter(|name| contract.get(name).is_some_and(|e| e.includes(service.name)) && !exported.contains(name))
        .collect();
    let families: Vec<&String> =
        exported.iter().filter(|n| !["_bucket", "_sum", "_count", "_total"].iter().any(|s| n.ends_with(s))).collect();
    (!missing.is_empty()).then(|| format!("{}: {missing:?} (it exports {families:?})", service.name))
}

/// The real services export every metric the rules and dashboards name. A family shows in `/metrics` once
/// it has a series, so an order goes through first, and the check is repeated until the deadline (the
/// consumer lag appears with librdkafka's first statistics after the partitions are assigned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_services_export_every_metric_the_rules_and_dashboards_name() {
    let stack = Stack::start("deploy-metrics", Options::default()).await;
    stack.set_stock("SKU-1", 10).await;
    let order_id = stack.place(&Stack::order("cust-metrics", &[("SKU-1", 1)])).await;
    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");

    let services = [&stack.orchestrator, &stack.inventory, &stack.payment, &stack.shipping];
    let deadline = tokio::time::Instant::now() + EXPORT_DEADLINE;
    let mut missing = Vec::new();
    loop {
        missing.clear();
        for service in services {
            missing.extend(missing_metrics(&stack, service).await);
        }
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "named in ops/prometheus/rules or ops/grafana/dashboards but not exported by the running services \
         within {EXPORT_DEADLINE:?}: {missing:#?}"
    );
    stack.cleanup().await;
}

/// A Prometheus on this machine, as `make test` starts it (`ops/prometheus/prometheus.sh`).
struct Prometheus {
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn from_env() -> Self {
        let url = std::env::var("PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".to_owned());
        let url = url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("an HTTP client");
        let ready = http.get(format!("{url}/-/ready")).send().await.is_ok_and(|r| r.status().is_success());
        assert!(
            ready,
            "no Prometheus answers at {url} (PROMETHEUS_URL): run the tests through `make test`, or start one with \
             `ops/prometheus/prometheus.sh start` (make prometheus-up)"
        );
        Self { url, http }
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Json {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), params).expect("a URL");
        let response = self.http.get(url).send().await.unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let body: Json = response.json().await.unwrap_or_else(|e| panic!("Prometheus {path}: not JSON: {e}"));
        body
    }

    /// The result of an instant query; panics with Prometheus's error when it refuses the query.
    async fn query(&self, expr: &str) -> Vec<Json> {
        let body = self.get("/api/v1/query", &[("query", expr)]).await;
        assert_eq!(body["status"], "success", "Prometheus refused {expr}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The sum of an instant query's values (None when it has no series).
    async fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await;
        (!result.is_empty()).then(|| {
            result.iter().map(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)).sum()
        })
    }

    /// The directory of the running config's file_sd target files (`…/targets/*.json`).
    async fn file_sd_dir(&self) -> PathBuf {
        let body = self.get("/api/v1/status/config", &[]).await;
        let config: Yaml = serde_yaml_ng::from_str(body["data"]["yaml"].as_str().expect("the config as YAML"))
            .expect("Prometheus's config is YAML");
        for job in config["scrape_configs"].as_sequence().into_iter().flatten() {
            for sd in job["file_sd_configs"].as_sequence().into_iter().flatten() {
                for file in strings(&sd["files"]) {
                    if let Some(dir) = file.strip_suffix("/*.json") {
                        return PathBuf::from(dir);
                    }
                }
            }
        }
        panic!(
            "the Prometheus at {} has no file_sd_configs with `<dir>/*.json`: start it with ops/prometheus/prometheus.sh",
            self.url
        )
    }
}

/// A stack's four services registered as Prometheus file_sd targets (labels `service` and `stack`);
/// unregistered when dropped.
struct Registration(PathBuf);

impl Registration {
    fn write(dir: &Path, stack: &Stack) -> Self {
        let services = [&stack.orchestrator, &stack.inventory, &stack.payment, &stack.shipping];
        let groups: Vec<Json> = services
            .iter()
            .map(|s| json!({"targets": [format!("127.0.0.1:{}", s.port)], "labels": {"service": s.name, "stack": stack.id}}))
            .collect();
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let file = dir.join(format!("{}.json", stack.id));
        // Written aside and renamed, so that Prometheus never reads half a file.
        let partial = dir.join(format!(".{}.json.partial", stack.id));
        std::fs::write(&partial, serde_json::to_vec_pretty(&groups).expect("JSON")).expect("write the targets");
        std::fs::rename(&partial, &file).expect("move the targets in place");
        Self(file)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Prometheus (the real one `make test` starts) scrapes a stack of the real binaries registered through
/// file_sd, evaluates every dashboard query and every rule without error, and shows a saga that waits for
/// its payment in `saga_in_state{state="RUNNING"}`, then no longer once it completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_stack_and_shows_sagas_by_state() {
    let prometheus = Prometheus::from_env().await;
    let targets = prometheus.file_sd_dir().await;
    // The saga must stay RUNNING while payment is held back; the saga gauges refresh every second.
    let orchestrator_env =
        vec![("SAGA_STEP_TIMEOUT_MS", "120000".to_owned()), ("SAGA_GAUGE_INTERVAL_SECS", "1".to_owned())];
    let options = Options { orchestrator_env, held_back: vec!["payment"], ..Options::default() };
    let mut stack = Stack::start("deploy-prometheus", options).await;
    let registration = Registration::write(&targets, &stack);
    let id = stack.id.clone();

    let up = |wanted: usize| {
        let (prometheus, id) = (&prometheus, &id);
        async move {
            let up = prometheus.value(&format!("sum(up{{stack=\"{id}\"}})")).await;
            up.filter(|&n| n >= wanted as f64)
        }
    };
    eventually("Prometheus to scrape the stack's three running services", FINISH, || up(3)).await;

    // Every rule loaded from the repository evaluates without error.
    let body = prometheus.get("/api/v1/rules", &[]).await;
    let loaded: BTreeMap<String, String> = body["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .map(|r| {
            (r["name"].as_str().unwrap_or_default().to_owned(), r["health"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    for rule in rules() {
        let health =
            loaded.get(&rule.alert).unwrap_or_else(|| panic!("Prometheus has not loaded alert {}", rule.alert));
        assert_ne!(health, "err", "alert {} fails to evaluate: {body}", rule.alert);
    }
    // Every dashboard query is valid PromQL for this Prometheus.
    for (place, expr) in dashboard_exprs() {
        let expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m");
        let body = prometheus.get("/api/v1/query", &[("query", &expr)]).await;
        assert_eq!(body["status"], "success", "{place}: Prometheus refuses `{expr}`: {body}");
    }

    // A saga waits for the payment service (held back): Prometheus shows it RUNNING.
    stack.set_stock("SKU-1", 10).await;
    let order_id = stack.place(&Stack::order("cust-prom", &[("SKU-1", 1)])).await;
    stack.wait_state(order_id, "RUNNING", Some("charge_payment"), FINISH).await;
    let running = format!("sum(saga_in_state{{stack=\"{id}\", state=\"RUNNING\"}})");
    eventually("Prometheus to show the saga in saga_in_state{state=\"RUNNING\"}", FINISH, || async {
        prometheus.value(&running).await.filter(|&n| n >= 1.0)
    })
    .await;

    // Payment starts: the saga completes, and Prometheus sees that too.
    let http = stack.http.clone();
    stack.payment.start(&http).await;
    let order = stack.wait_terminal(order_id, FINISH).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    eventually("Prometheus to scrape all four services", FINISH, || up(4)).await;
    let completed = format!("sum(saga_completed_total{{stack=\"{id}\"}})");
    eventually("Prometheus to show no saga RUNNING and one completed", FINISH, || async {
        let running = prometheus.value(&running).await.unwrap_or(0.0);
        let completed = prometheus.value(&completed).await.unwrap_or(0.0);
        (running == 0.0 && completed >= 1.0).then_some(())
    })
    .await;

    drop(registration);
    stack.cleanup().await;
}
