//! The Python client package (clients/python) and the scheduler example built on it, against
//! real labs.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use weir::lab::{self, Lab};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_scheduler_example_runs_a_job_against_the_lab() {
    let mut s = spec("py");
    s.runners = 3;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let master = new_netns(&lab, "m");
    let w1 = new_netns(&lab, "w1");
    let w2 = new_netns(&lab, "w2");
    // Two workloads per page: the job's three are listed over two pages.
    let out = python_scheduler(&lab)
        .args(["--page-size", "2"])
        .args(["--master", &format!("r1={master}")])
        .args([
            "--worker",
            &format!("r2={w1}"),
            "--worker",
            &format!("r3={w2}"),
        ])
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["plan"], "10.128.0.0/12/6/14");
    assert_eq!(v["reserved_ip"], "10.128.64.2");
    assert_eq!(
        v["master"]["ip"], "10.128.64.2/18",
        "the master got the reserved address"
    );
    assert_eq!(v["workers"][0]["ip"], "10.128.128.2/18");
    assert_eq!(v["workers"][1]["ip"], "10.128.192.2/18");
    assert_eq!(v["listed"].as_array().unwrap().len(), 3);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for want in [
        "reservation_made",
        "reservation_used",
        "workload_attached",
        "workload_detached",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "workload_detached").count(),
        3
    );
    // Everything was detached.
    assert_eq!(lab.status().unwrap()["workloads"], 0);
}

/// A directory of the test's own outside the checkout, removed when dropped (also on failure).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("weir-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a command to completion; panic with its output unless it succeeds.
fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `clients/python` installs with pip into a fresh venv outside the checkout (from a copy, so
/// nothing can come from the checkout), its checked-in stubs are what grpcio-tools makes of
/// `proto/`, and its own tests pass against a lab's unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_installs_in_a_fresh_venv_and_its_tests_pass_against_a_lab() {
    let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = TempDir::new("pyclient");
    let pkg = tmp.0.join("weir-client");
    let venv = tmp.0.join("venv");
    run_ok(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(checkout.join("clients/python"))
            .arg(&pkg),
        "copy clients/python",
    );
    // Whatever a local run left in the checkout (bytecode) is not part of the package.
    run_ok(
        std::process::Command::new("find").arg(&pkg).args([
            "-name",
            "__pycache__",
            "-prune",
            "-exec",
            "rm",
            "-rf",
            "{}",
            "+",
        ]),
        "remove __pycache__",
    );
    run_ok(
        std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv),
        "python3 -m venv",
    );
    let py = venv.join("bin/python");
    run_ok(
        std::process::Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(&pkg)
            .arg("-r")
            .arg(pkg.join("requirements-dev.txt"))
            .current_dir(&tmp.0),
        "pip install ./clients/python",
    );

    // The checked-in stubs are what the pinned grpcio-tools makes of proto/ now.
    let check = run_ok(
        std::process::Command::new(&py)
            .arg(pkg.join("generate.py"))
            .arg("--check")
            .arg("--proto")
            .arg(checkout.join("proto"))
            .current_dir(&tmp.0),
        "generate.py --check (clients/python/src/weir_client/v1 is stale: run clients/python/generate.py)",
    );
    assert!(check.contains("files match"), "{check}");

    let mut s = spec("pyc");
    s.runners = 2;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let netns = [("r1", "a"), ("r2", "b"), ("r1", "c")]
        .map(|(r, m)| format!("{r}={}", new_netns(&lab, m)))
        .join(",");
    // The tests run from the copy's tests/ with the venv's python: `weir_client` can only be
    // the installed one (a test asserts it).
    let out = run_ok(
        std::process::Command::new(&py)
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v"])
            .arg(pkg.join("tests"))
            // test_tls.py runs below, against a TLS host.
            .arg(format!(
                "--ignore={}",
                pkg.join("tests/test_tls.py").display()
            ))
            .env("WEIR_TEST_HOST", lab.control_url())
            .env("WEIR_TEST_TOKEN_FILE", lab.dir.join("control.token"))
            .env("WEIR_TEST_NETNS", &netns)
            .env("WEIR_TEST_INSTALLED", "1")
            .env_remove("WEIR_TOKEN")
            .env_remove("WEIR_HOST")
            .env_remove("PYTHONPATH")
            .current_dir(&tmp.0),
        "pytest clients/python/tests",
    );
    assert!(
        !out.contains("SKIPPED") && out.contains(" passed"),
        "every test ran:\n{out}"
    );
    for t in [
        "test_a_job_reserve_attach_page_watch_detach PASSED",
        "test_an_unreachable_host_is_skipped_for_the_next PASSED",
        "test_the_installed_package_is_the_one_imported PASSED",
    ] {
        assert!(out.contains(t), "{t} missing:\n{out}");
    }
    // The tests detached everything they attached.
    assert_eq!(lab.status().unwrap()["workloads"], 0);
    drop(lab);

    // TLS and mTLS: a host with a TLS listener that requires client certificates; the tests
    // run in the host's namespace, where its TCP listener is.
    let certs = tmp.0.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let pem = |name: &str, text: String| {
        let p = certs.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: BoringSSL (grpcio) takes a leaf whose subject is its issuer's (rcgen's
    // default for both) for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "weir test CA");
    let ca = pem("ca.pem", ca_params.self_signed(&ca_key).unwrap().pem());
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, ip: Option<Ipv4Addr>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        if let Some(ip) = ip {
            p.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (host_pem, host_key) = leaf(vec!["weir-host".into()], Some(lab::HOST_IP));
    let (cli_pem, cli_key) = leaf(vec!["scheduler".into()], None);
    let (host_cert, host_key) = (pem("host.pem", host_pem), pem("host.key", host_key));
    let (cli_cert, cli_key) = (pem("client.pem", cli_pem), pem("client.key", cli_key));
    let mut s = spec("pyt");
    s.runners = 0;
    s.workloads_per_runner = 0;
    s.host_keys =
        format!("tls_cert = \"{host_cert}\"\ntls_key = \"{host_key}\"\ntls_client_ca = \"{ca}\"\n");
    s.host_url = format!("https://{}:{}", lab::HOST_IP, lab::HOST_PORT);
    let lab = must(Lab::up(s).await);
    let mut pytest = std::process::Command::new(&py);
    pytest
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v"])
        .arg(pkg.join("tests/test_tls.py"))
        .env("WEIR_TEST_HOST", lab.control_url())
        .env("WEIR_TEST_TOKEN_FILE", lab.dir.join("control.token"))
        .env("WEIR_TEST_TLS_HOST", &lab.spec.host_url)
        .env("WEIR_TEST_TLS_CA", &ca)
        .env("WEIR_TEST_TLS_CERT", &cli_cert)
        .env("WEIR_TEST_TLS_KEY", &cli_key)
        .env_remove("WEIR_TOKEN")
        .env_remove("PYTHONPATH")
        .current_dir(&tmp.0);
    lab::run_in_namespace(&mut pytest, &lab.ns("host")).unwrap();
    let out = run_ok(&mut pytest, "pytest clients/python/tests/test_tls.py");
    assert!(
        !out.contains("SKIPPED") && out.contains("3 passed"),
        "every TLS test ran:\n{out}"
    );
}
