//! TLS and mTLS on the host's gRPC listener, with certificates made by `weir certs`; a host
//! without TLS on a non-loopback address.

mod common;

use common::*;
use weir::lab::{self, Lab};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_join_over_mtls_and_clients_without_a_certificate_are_refused() {
    let mut s = spec("tls");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.plaintext = false;
    // The cluster's certificates, made by `weir certs`: the CA, the host's (valid for its
    // underlay address), and client certificates for the runners and the CLI.
    let certs_dir = TempDir(std::env::temp_dir().join(format!("weir-tls-{}", std::process::id())));
    let d = certs_dir.0.join("pki");
    let dir = d.to_str().unwrap();
    certs(&["ca", "--dir", dir]);
    let host_ip = lab::HOST_IP.to_string();
    certs(&["host", "--dir", dir, "--name", "host", "--san", &host_ip]);
    certs(&["runner", "--dir", dir, "--name", "runner"]);
    certs(&["runner", "--dir", dir, "--name", "cli"]);
    use std::os::unix::fs::PermissionsExt;
    for (file, mode) in [
        ("ca.key", 0o600),
        ("host.key", 0o600),
        ("runner.key", 0o600),
        ("ca.pem", 0o644),
    ] {
        let m = std::fs::metadata(d.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    let path = |f: &str| d.join(f).display().to_string();
    let (ca, host_cert, host_key) = (path("ca.pem"), path("host.pem"), path("host.key"));
    let (cli_cert, cli_key) = (path("cli.pem"), path("cli.key"));
    let (runner_cert, runner_key) = (path("runner.pem"), path("runner.key"));
    s.host_keys = format!(
        "heartbeat_timeout = \"3s\"\ntls_cert = \"{host_cert}\"\ntls_key = \"{host_key}\"\ntls_client_ca = \"{ca}\"\n"
    );
    s.host_url = format!("https://{}:{}", lab::HOST_IP, lab::HOST_PORT);
    s.runner_keys = format!(
        "heartbeat_interval = \"300ms\"\ntls_ca = \"{ca}\"\ntls_cert = \"{runner_cert}\"\ntls_key = \"{runner_key}\"\n"
    );
    let mut lab = must(Lab::up(s).await);

    // Runners with a client certificate join and carry traffic.
    lab.add_runner(1).await.unwrap();
    lab.add_runner(2).await.unwrap();
    let a = lab.add_workload(1, 1).await.unwrap();
    lab.add_workload(2, 1).await.unwrap();
    assert!(lab.ping("r2-w1", a.split('/').next().unwrap().parse().unwrap()));

    // A runner without a client certificate cannot even complete the handshake.
    lab.spec.runner_keys = format!("heartbeat_interval = \"300ms\"\ntls_ca = \"{ca}\"\n");
    lab.spec.ready_timeout = std::time::Duration::from_secs(3);
    let err = lab
        .add_runner(3)
        .await
        .expect_err("no client certificate, no registration")
        .to_string();
    assert!(
        // The handshake fails: hyper reports it as a transport error, or (when the host
        // closes the connection first) as a cancelled operation.
        err.contains("registration refused")
            && (err.contains("transport error") || err.contains("CANCELLED")),
        "{err}"
    );
    assert!(runner_status(&lab, "r3").is_none());

    // The CLI over TCP from the host's own namespace: plaintext fails, mTLS works.
    let tcp = format!("https://{}:{}", lab::HOST_IP, lab::HOST_PORT);
    let run = |extra: &[&str]| {
        let mut args = vec!["status", "--json", "--host", &tcp, "--tls-ca", &ca];
        args.extend_from_slice(extra);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(&args).env("WEIR_TOKEN", lab.control_token());
        lab::run_in_namespace(&mut cmd, &lab.ns("host")).unwrap();
        cmd.output().unwrap()
    };
    let out = run(&["--tls-cert", &cli_cert, "--tls-key", &cli_key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "no client certificate: refused");
    let mut plain = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    plain
        .args([
            "status",
            "--host",
            &format!("http://{}:{}", lab::HOST_IP, lab::HOST_PORT),
        ])
        .env("WEIR_TOKEN", lab.control_token());
    lab::run_in_namespace(&mut plain, &lab.ns("host")).unwrap();
    assert_eq!(
        plain.output().unwrap().status.code(),
        Some(1),
        "plaintext to a TLS listener fails"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_host_beyond_loopback_starts_only_when_allowed_and_then_warns() {
    let mut s = spec("plain");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.plaintext = false;
    let mut lab = must(Lab::underlay(s).await);
    let err = lab
        .start_host()
        .await
        .expect_err("0.0.0.0 without TLS or host.allow_plaintext")
        .to_string();
    assert!(
        err.contains("host.listen")
            && err.contains("host.tls_cert")
            && err.contains("host.allow_plaintext = true"),
        "{err}"
    );
    assert!(lab.host.is_none());
    // The refusal comes before the daemon binds or starts anything: a usage error (exit 2).
    // (In the lab's host namespace, should it ever start.)
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("host")
        .env("WEIR_HOST__REACHABLE_ADDRESS", "192.0.2.1")
        .env("WEIR_HOST__STATE_DIR", lab.dir.join("refused-state"))
        .env("WEIR_HOST__CONTROL_SOCKET", lab.dir.join("refused.sock"))
        .env_remove("WEIR_CONFIG");
    lab::run_in_namespace(&mut cmd, &lab.ns("host")).unwrap();
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("host.listen (built-in defaults): 0.0.0.0:7700")
            && !stderr.contains("Prometheus metrics at"),
        "{stderr}"
    );
    lab.spec.plaintext = true;
    lab.start_host().await.unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::read_to_string(&lab.host.as_ref().unwrap().log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("host.allow_plaintext = true")
            && l.contains("clear text")),
        "{log}"
    );
}
