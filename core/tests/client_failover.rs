//! The control clients against two real hosts on one etcd (issue 18): the `weir` CLI given
//! several hosts' URLs, and the Python client, pass the standby over for the leader, report a
//! standby's refusal as it is when given only the standby, and find the new leader when the
//! old one dies.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use weir::lab::Lab;
use weir_proto::v1 as pb;

/// Two hosts on a three-member etcd (host 1 leads, host 2 stands by) and one runner.
async fn two_hosts(tag: &str) -> Lab {
    let mut s = spec(tag);
    s.hosts = 2;
    s.etcd_members = 3;
    s.runners = 1;
    s.workloads_per_runner = 0;
    let mut lab = must(Lab::underlay(s).await);
    lab.start_host_n(1).await.unwrap_or_else(|e| panic!("{e}"));
    wait_for_leader(&lab, 1, dur(20)).await;
    lab.start_host_n(2).await.unwrap_or_else(|e| panic!("{e}"));
    lab.add_runner(1).await.unwrap_or_else(|e| panic!("{e}"));
    lab
}

/// Wait until host `i` answers GetStatus (it leads).
async fn wait_for_leader(lab: &Lab, i: u32, within: Duration) {
    let start = Instant::now();
    loop {
        let mut c = control_at(&lab.control_url_of(i), &lab.control_token()).await;
        if c.get_status(pb::GetStatusRequest {}).await.is_ok() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "host {i} did not lead within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `weir ARGS…` with the lab's control token.
fn weir(lab: &Lab, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_CONFIG")
        .env_remove("WEIR_HOST")
        .env("WEIR_TOKEN", lab.control_token())
        .output()
        .expect("run weir")
}

#[track_caller]
fn exits(out: &Output, code: i32, want: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    for w in want {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
}

/// A Python client of `hosts` (system python3, the checkout's `weir_client`): it prints the
/// target of a first status call, then, for each line read, the target of another (or the
/// error), so a test can kill a host in between.
fn python_client(lab: &Lab, hosts: &[String]) -> std::process::Child {
    let script = r#"
import sys
from weir_client import Client, WeirError
with Client(sys.argv[1:], leader_wait=30) as c:
    while True:
        try:
            s = c.status()
            print("ok", c.target, s.plan, flush=True)
        except WeirError as e:
            print("error", str(e).replace("\n", " | "), flush=True)
        if not sys.stdin.readline():
            break
"#;
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(hosts)
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/python/src"),
        )
        .env("WEIR_TOKEN", lab.control_token())
        .env_remove("WEIR_HOST")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3")
}

/// A child process killed when dropped (a failed assertion leaves no client behind).
struct Python(std::process::Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_given_both_hosts_find_the_leader_and_follow_it_when_it_dies() {
    let mut lab = two_hosts("clf").await;
    let (leader, standby) = (lab.control_url_of(1), lab.control_url_of(2));

    // The standby alone: its refusal is the answer, naming the leader (exit 1).
    exits(
        &weir(&lab, &["status", "--host", &standby]),
        1,
        &["UNAVAILABLE", "is a standby", "the leader is"],
    );
    // Both, the standby first: the command passes it over for the leader; a write too.
    let both = format!("{standby},{leader}");
    let out = weir(&lab, &["status", "--json", "--host", &both]);
    exits(&out, 0, &[]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["plan"], "10.128.0.0/12/6/14", "{s}");
    let out = weir(
        &lab,
        &["reserve", "--runner", "r1", "--json", "--host", &both],
    );
    exits(&out, 0, &[]);
    // Nobody that leads among those given: exit 1 after the wait, naming each answer.
    let dead = format!("unix://{}", lab.dir.join("nobody.sock").display());
    exits(
        &weir(&lab, &["status", "--host", &format!("{dead},{standby}")]),
        1,
        &[
            "no host leads",
            &format!("{dead}: cannot connect"),
            &format!("{standby}: NOT_SERVING (a standby)"),
        ],
    );

    // A Python client of both finds the leader, and when the leader dies it finds the new one
    // with its next call.
    let mut py = Python(python_client(&lab, &[leader.clone(), standby.clone()]));
    let (tx, answers) = std::sync::mpsc::channel();
    let stdout = py.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let answer = || {
        answers
            .recv_timeout(dur(60))
            .expect("the Python client answers")
    };
    assert_eq!(answer(), format!("ok {leader} 10.128.0.0/12/6/14"));
    lab.host_daemon(1)
        .expect("host 1 runs")
        .stop(libc::SIGKILL)
        .unwrap();
    writeln!(py.0.stdin.as_mut().unwrap(), "again").unwrap();
    assert_eq!(answer(), format!("ok {standby} 10.128.0.0/12/6/14"));
    drop(py.0.stdin.take());
    assert!(py.0.wait().unwrap().success());

    // And the CLI, given the dead host first, goes on to the new leader.
    wait_for_leader(&lab, 2, dur(20)).await;
    let out = weir(
        &lab,
        &["status", "--json", "--host", &format!("{leader},{standby}")],
    );
    exits(&out, 0, &[]);
    // Host 2 alone now leads: one URL is enough again.
    exits(&weir(&lab, &["runners", "--host", &standby]), 0, &[]);
}
