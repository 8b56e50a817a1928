//! The commands docs/api.md gives for the host's unix socket, run as written against a lab:
//! grpcio from Python (with `grpc.default_authority`, and without it the failure the docs
//! describe), and `buf curl` (standing in for grpcurl, which cannot be installed here) with
//! server reflection v1 and v1alpha.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use weir::lab::Lab;

const DOC_SOCKET: &str = "/run/weir/host.sock";
const DOC_TOKEN: &str = "/etc/weir/sched.token";

fn checkout() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// docs/api.md's section on the unix socket and third-party tools.
fn section() -> String {
    let doc = std::fs::read_to_string(checkout().join("docs/api.md")).unwrap();
    let start = doc
        .find("## The unix socket from other gRPC tools")
        .expect("docs/api.md has the section on the unix socket");
    let rest = &doc[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// The fenced code blocks of a language in `text`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&fence) {
        let body = &rest[i + fence.len()..];
        let end = body.find("```").expect("a closed code block");
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

/// `buf` from npm's @bufbuild/buf (scripts/bootstrap.d/buf.sh), or $WEIR_BUF.
fn buf() -> PathBuf {
    let p = std::env::var_os("WEIR_BUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/var/cache/weir/buf/node_modules/@bufbuild/buf-linux-x64/bin/buf")
        });
    assert!(
        p.is_file(),
        "{} is missing: run scripts/bootstrap.sh (scripts/bootstrap.d/buf.sh installs it)",
        p.display()
    );
    p
}

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("start the command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_grpcio_and_buf_curl_commands_work_on_the_unix_socket() {
    let doc = section();
    let mut s = spec("uds");
    s.runners = 1;
    s.workloads_per_runner = 0;
    let lab = must(Lab::up(s).await);
    let socket = lab.dir.join("host.sock").display().to_string();
    let token = lab.dir.join("control.token").display().to_string();
    let local = |text: &str| text.replace(DOC_SOCKET, &socket).replace(DOC_TOKEN, &token);

    // grpcio, exactly as documented (the stubs from the package in this checkout).
    let py = blocks(&doc, "python");
    assert_eq!(py.len(), 1, "one Python example: {py:?}");
    let python = |code: &str| {
        output(
            Command::new("python3")
                .args(["-c", code])
                .env("PYTHONPATH", checkout().join("clients/python/src"))
                .env("PYTHONDONTWRITEBYTECODE", "1"),
        )
    };
    let (ok, stdout, stderr) = python(&local(&py[0]));
    assert!(
        ok,
        "the documented grpcio example failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout, "SERVING\n10.128.0.0/12/6/14\n");
    // Without the option grpcio sends the socket path as :authority and the call fails as the
    // docs say.
    let option =
        ",\n                                options=[(\"grpc.default_authority\", \"localhost\")])";
    assert!(py[0].contains(option), "{}", py[0]);
    let (ok, stdout, stderr) = python(&local(&py[0].replace(option, ")")));
    assert!(
        !ok && stderr.contains("StatusCode.INTERNAL") && stderr.contains("RST_STREAM"),
        "without grpc.default_authority the docs promise INTERNAL … RST_STREAM; if the host \
         now accepts the socket path, docs/api.md must say so:\n{stdout}\n{stderr}"
    );

    // Every grpcurl command in docs/api.md names the authority and asks for plaintext.
    let all = std::fs::read_to_string(checkout().join("docs/api.md")).unwrap();
    let grpcurl: Vec<&str> = all.lines().filter(|l| l.starts_with("grpcurl -")).collect();
    assert!(grpcurl.len() >= 4, "{grpcurl:?}");
    for l in &grpcurl {
        assert!(
            l.starts_with("grpcurl -plaintext -authority localhost -unix "),
            "{l}"
        );
    }

    // buf curl, each documented command after the block's first line (its variables).
    let sh = blocks(&doc, "sh");
    let block = sh
        .iter()
        .find(|b| b.contains("buf curl"))
        .expect("a buf curl block");
    let mut lines = block.lines();
    let preamble = local(lines.next().unwrap());
    let buf = buf().display().to_string();
    let mut ran = Vec::new();
    for cmd in lines.filter(|l| !l.trim().is_empty()) {
        assert!(cmd.starts_with("buf curl "), "{cmd}");
        let script = format!("{preamble}\n{}", cmd.replacen("buf", &buf, 1));
        let (ok, stdout, stderr) = output(Command::new("bash").args(["-c", &script]));
        assert!(ok, "{cmd}:\n{stdout}\n{stderr}");
        if cmd.contains("--list-services") {
            let services: Vec<&str> = stdout.lines().collect();
            for want in ["grpc.health.v1.Health", "weir.v1.Control"] {
                assert!(services.contains(&want), "{cmd}: {services:?}");
            }
            ran.push("list");
        } else if cmd.contains("/grpc.health.v1.Health/Check") {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["status"], "SERVING", "{cmd}");
            ran.push("health");
        } else if cmd.contains("/weir.v1.Control/GetStatus") {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["plan"], "10.128.0.0/12/6/14", "{cmd}");
            assert_eq!(v["runners"][0]["name"], "r1", "{cmd}");
            ran.push(if cmd.contains("--reflect-protocol grpc-v1alpha") {
                "status-v1alpha"
            } else if cmd.contains("--reflect-protocol grpc-v1 ") {
                "status-v1"
            } else {
                panic!("{cmd}: which reflection protocol?")
            });
        } else {
            panic!("a documented command the test does not check: {cmd}");
        }
    }
    ran.sort();
    assert_eq!(
        ran,
        ["health", "list", "status-v1", "status-v1alpha"],
        "every documented buf curl command ran"
    );
}
