//! TLS and mTLS on the host's gRPC listener, with certificates made for the test.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use weir::lab::{self, Lab};

struct Pki {
    ca: String,
    host: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, ip: Option<Ipv4Addr>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        if let Some(ip) = ip {
            p.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    Pki {
        ca: ca_cert.pem(),
        host: leaf(vec!["weir-host".into()], Some(lab::HOST_IP)),
        client: leaf(vec!["runner".into()], None),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_join_over_mtls_and_clients_without_a_certificate_are_refused() {
    let mut s = spec("tls");
    s.runners = 0;
    s.workloads_per_runner = 0;
    let pki = pki();
    let certs = std::env::temp_dir().join(format!("weir-tls-{}", std::process::id()));
    std::fs::create_dir_all(&certs).unwrap();
    let ca = write(&certs, "ca.pem", &pki.ca);
    let host_cert = write(&certs, "host.pem", &pki.host.0);
    let host_key = write(&certs, "host.key", &pki.host.1);
    let cli_cert = write(&certs, "client.pem", &pki.client.0);
    let cli_key = write(&certs, "client.key", &pki.client.1);
    s.host_keys = format!(
        "heartbeat_timeout = \"3s\"\ntls_cert = \"{host_cert}\"\ntls_key = \"{host_key}\"\ntls_client_ca = \"{ca}\"\n"
    );
    s.host_url = format!("https://{}:{}", lab::HOST_IP, lab::HOST_PORT);
    s.runner_keys = format!(
        "heartbeat_interval = \"300ms\"\ntls_ca = \"{ca}\"\ntls_cert = \"{cli_cert}\"\ntls_key = \"{cli_key}\"\n"
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
    std::fs::remove_dir_all(&certs).unwrap();
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
