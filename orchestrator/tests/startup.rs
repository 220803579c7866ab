//! Start-up refuses unsafe or nonsensical configuration with one clear line, before connecting to anything.

use std::process::Command;

fn start(env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .envs(env.iter().copied())
        // Nothing listens here: a configuration error must come before any connection attempt.
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("MONGODB_URI", "mongodb://127.0.0.1:1")
        .output()
        .expect("run the orchestrator");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn production_refuses_the_built_in_secrets() {
    let (ok, stderr) = start(&[("SAGA_ENV", "production")]);
    assert!(!ok);
    assert!(stderr.contains("SAGA_ENV=production with the built-in development JWT secret"), "{stderr}");
    let (ok, stderr) = start(&[("SAGA_ENV", "production"), ("JWT_SECRET", "a-real-secret-of-at-least-32-characters!")]);
    assert!(!ok);
    assert!(stderr.contains("CUSTOMER_REF_KEY"), "{stderr}");
}

#[test]
fn nonsense_settings_are_named() {
    for (name, value, expected) in [
        ("SAGA_ENV", "staging", "SAGA_ENV"),
        ("JWT_SECRET", "short", "JWT_SECRET must be at least 32 characters"),
        ("SAGA_STEP_TIMEOUT_MS", "soon", "SAGA_STEP_TIMEOUT_MS"),
        ("KAFKA_TOPIC_PARTITIONS", "0", "KAFKA_TOPIC_PARTITIONS"),
        ("SAGA_FINISHED_RECOUNT_HOURS", "0", "SAGA_FINISHED_RECOUNT_HOURS must be between 1 and 8760"),
        ("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem", "cannot read JWT_PUBLIC_KEY_FILE"),
    ] {
        let (ok, stderr) = start(&[(name, value)]);
        assert!(!ok, "{name}={value} must be refused");
        assert!(stderr.contains(expected), "{name}={value}: {stderr}");
        assert!(stderr.lines().filter(|l| l.starts_with("orchestrator:")).count() == 1, "one clear line: {stderr}");
    }
}
