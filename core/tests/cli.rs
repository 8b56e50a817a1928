//! The `weir` binary as a user runs it: the exit statuses the README documents (0 success,
//! 1 a refused or failed operation, 2 a usage or configuration error), shell completions loaded
//! into bash, zsh and fish, the man pages, `config show --json`, and against a `weir lab up`
//! started with `--config`: versions in `weir status`, its watch mode, the token hints.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn weir_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(args)
        .env_remove("WEIR_CONFIG")
        .env_remove("WEIR_HOST")
        .env_remove("WEIR_TOKEN")
        .env_remove("WEIR_TLS_CA")
        .env_remove("WEIR_TLS_CERT")
        .env_remove("WEIR_TLS_KEY");
    cmd
}

fn weir(args: &[&str]) -> Output {
    weir_cmd(args).output().expect("run weir")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `out` exited with `code`, and its stderr contains every one of `want`.
#[track_caller]
fn exits(out: &Output, code: i32, want: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status; stdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    for w in want {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
}

/// A directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("weir-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn exit_statuses_without_a_host() {
    let dir = TempDir::new("exit");
    // 0: help and version.
    let out = weir(&["--version"]);
    exits(&out, 0, &[]);
    assert_eq!(stdout(&out).trim(), format!("weir {VERSION}"));
    exits(&weir(&["status", "--help"]), 0, &[]);
    // 2: bad arguments.
    exits(&weir(&["frobnicate"]), 2, &["unrecognized subcommand"]);
    exits(&weir(&["attach", "--id", "w"]), 2, &["--runner"]);
    exits(&weir(&["status", "--interval", "1s"]), 2, &["--watch"]);
    exits(
        &weir(&["status", "--watch", "--interval", "10ms"]),
        2,
        &["at least 100ms"],
    );
    exits(&weir(&["completion", "tcsh"]), 2, &["tcsh"]);
    // 2: a host URL that cannot work; the message says which ones do.
    exits(
        &weir(&["status", "--host", "ftp://192.0.2.1:7700"]),
        2,
        &[
            "ftp://192.0.2.1:7700",
            "unsupported scheme",
            "https://HOST:PORT",
        ],
    );
    exits(
        &weir(&["workloads", "--host", "https://192.0.2.1:7700"]),
        2,
        &["needs the CA"],
    );
    // 2: a token file or a configuration that cannot be read.
    let missing = dir.0.join("missing");
    let missing = missing.to_str().unwrap();
    exits(
        &weir(&["status", "--host", "unix:///x", "--token-file", missing]),
        2,
        &["--token-file"],
    );
    exits(
        &weir(&["config", "show", "--config", missing]),
        2,
        &[missing],
    );
    let bad = dir.file("bad.toml", "[overlay]\nmtu = \"big\"\n");
    exits(
        &weir(&["status", "--config", bad.to_str().unwrap()]),
        2,
        &["overlay.mtu", "bad.toml"],
    );
    // 1: a host that does not answer.
    let sock = dir.0.join("nobody.sock");
    exits(
        &weir(&["status", "--host", &format!("unix://{}", sock.display())]),
        1,
        &["cannot reach the host", "nobody.sock"],
    );
    // 1: a client that cannot do what it was asked (a bad address plan for `weir plan` is 2:
    // see cli_plan.rs).
    let out = weir_cmd(&["runners", "--host", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    exits(&out, 1, &["cannot reach the host"]);
    // Several hosts: every URL is checked first (2), and when none leads (here: none answers)
    // the command gives up after a while, naming each URL and what it answered (1).
    exits(
        &weir(&[
            "status",
            "--host",
            "http://127.0.0.1:9,ftp://192.0.2.1:7700",
        ]),
        2,
        &["--host", "ftp://192.0.2.1:7700", "unsupported scheme"],
    );
    exits(&weir(&["status", "--host", " , "]), 2, &["no URL in it"]);
    let list = format!("http://127.0.0.1:9,unix://{}", sock.display());
    let started = std::time::Instant::now();
    exits(
        &weir(&["status", "--host", &list]),
        1,
        &[
            "no host leads: none of the 2 hosts answered as the leader",
            "\n  http://127.0.0.1:9: cannot connect: ",
            &format!("\n  unix://{}: cannot connect: ", sock.display()),
        ],
    );
    assert!(
        started.elapsed()
            >= weir::transport::leader::LEADER_WAIT - std::time::Duration::from_secs(1),
        "it looked for a leader for a while: {:?}",
        started.elapsed()
    );
}

#[test]
fn config_show_json_is_the_effective_configuration() {
    let dir = TempDir::new("config");
    let file = dir.file(
        "weir.toml",
        "[overlay]\nmtu = 1400\n[runner]\nlabels = { zone = \"a\" }\n",
    );
    let out = weir_cmd(&[
        "config",
        "show",
        "--json",
        "--config",
        file.to_str().unwrap(),
    ])
    .env("WEIR_OVERLAY__VXLAN_PORT", "4790")
    .output()
    .unwrap();
    exits(&out, 0, &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["overlay"]["mtu"], 1400);
    assert_eq!(v["overlay"]["vxlan_port"], 4790);
    assert_eq!(v["overlay"]["vxlan_id_base"], 100);
    assert_eq!(v["runner"]["labels"]["zone"], "a");
    // The same configuration as the TOML form shows.
    let toml_out = weir_cmd(&["config", "show", "--config", file.to_str().unwrap()])
        .env("WEIR_OVERLAY__VXLAN_PORT", "4790")
        .output()
        .unwrap();
    exits(&toml_out, 0, &[]);
    // (TOML has no null: keys that are not set are left out there.)
    let t: toml::Table = stdout(&toml_out).parse().unwrap();
    assert_eq!(serde_json::to_value(&t).unwrap(), without_nulls(v));
}

fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, without_nulls(v)))
            .collect(),
        serde_json::Value::Array(a) => a.into_iter().map(without_nulls).collect(),
        other => other,
    }
}

fn run_shell(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (scripts/bootstrap.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

#[test]
fn completions_load_and_complete_in_bash_zsh_and_fish() {
    let dir = TempDir::new("completion");
    let script = |shell: &str| {
        let out = weir(&["completion", shell]);
        exits(&out, 0, &[]);
        dir.file(&format!("weir.{shell}"), &stdout(&out))
    };
    // bash: the completion function offers `weir lab`'s subcommands and `status --watch`.
    let bash = script("bash");
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; _weir weir '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.display(),
            words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        );
        run_shell("bash", &["--norc", "-c", &program])
    };
    let lab = complete("weir lab ");
    for sub in ["up", "down", "demo"] {
        assert!(lab.lines().any(|l| l == sub), "bash: weir lab → {lab}");
    }
    let status = complete("weir status --w");
    assert!(status.lines().any(|l| l == "--watch"), "bash: {status}");
    let shells = complete("weir completion ");
    for sh in ["bash", "zsh", "fish"] {
        assert!(shells.lines().any(|l| l == sh), "bash: {shells}");
    }

    // fish: `complete -C` asks the loaded completions, with their help texts.
    let fish = script("fish");
    let ask = |line: &str| {
        run_shell(
            "fish",
            &[
                "--no-config",
                "-c",
                &format!("source {}; complete -C '{line}'", fish.display()),
            ],
        )
    };
    let lab = ask("weir lab ");
    assert!(
        lab.lines()
            .any(|l| l.starts_with("up\t") && l.contains("leave it running")),
        "fish: {lab}"
    );
    let detach = ask("weir detach --");
    assert!(
        detach
            .lines()
            .any(|l| l.starts_with("--runner\t") && l.contains("only a check")),
        "fish: {detach}"
    );

    // zsh: the script parses, and registers `_weir` for `weir` under compinit.
    let zsh = script("zsh");
    assert!(
        std::fs::read_to_string(&zsh)
            .unwrap()
            .starts_with("#compdef weir")
    );
    run_shell("zsh", &["-n", zsh.to_str().unwrap()]);
    let registered = run_shell(
        "zsh",
        &[
            "-fc",
            &format!(
                "autoload -U compinit && compinit -u -D && source {} && print -r -- ${{_comps[weir]}}",
                zsh.display()
            ),
        ],
    );
    assert_eq!(registered.trim(), "_weir");
}

/// groff's warnings about a page (empty: it renders cleanly).
fn groff_warnings(page: &Path) -> String {
    let out = Command::new("groff")
        // -k: the input is UTF-8 (as man(1) reads it, through preconv).
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .expect("run groff (scripts/bootstrap.sh installs it)");
    assert!(
        out.status.success(),
        "groff {}: {}",
        page.display(),
        stderr(&out)
    );
    stderr(&out)
}

#[test]
fn man_pages_render_for_every_command() {
    let dir = TempDir::new("man");
    let out = weir(&["man"]);
    exits(&out, 0, &[]);
    let page = stdout(&out);
    assert!(page.contains(".TH weir 1"), "{page}");
    for sub in ["attach", "status", "completion", "lab"] {
        assert!(page.contains(sub), "weir(1) lists {sub}");
    }
    let one = dir.file("weir.1", &page);
    assert_eq!(groff_warnings(&one), "");

    let pages = dir.0.join("pages");
    exits(&weir(&["man", "--dir", pages.to_str().unwrap()]), 0, &[]);
    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in [
        "weir.1",
        "weir-attach.1",
        "weir-detach.1",
        "weir-status.1",
        "weir-lab-up.1",
        "weir-plugin-check.1",
        "weir-config-show.1",
        "weir-completion.1",
        "weir-man.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for n in &names {
        assert_eq!(groff_warnings(&pages.join(n)), "", "{n}");
    }
    let detach = std::fs::read_to_string(pages.join("weir-detach.1")).unwrap();
    assert!(detach.contains("only a check"), "{detach}");
    // A file where the directory should be: exit 1, nothing written.
    let blocked = dir.file("blocked", "");
    exits(
        &weir(&["man", "--dir", blocked.to_str().unwrap()]),
        1,
        &["blocked"],
    );
}

/// A lab started with `weir lab up`, brought down with `weir lab down` when dropped (also
/// when the test fails).
struct LabUp {
    name: String,
    dir: PathBuf,
}

impl LabUp {
    fn url(&self) -> String {
        format!("unix://{}", self.dir.join("host.sock").display())
    }
    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.token"))
            .unwrap()
            .trim()
            .to_string()
    }
    /// `weir ARGS…` against the lab's host with its control token.
    fn weir(&self, args: &[&str]) -> Output {
        weir_cmd(args)
            .env("WEIR_HOST", self.url())
            .env("WEIR_TOKEN", self.token())
            .output()
            .unwrap()
    }
}

impl Drop for LabUp {
    fn drop(&mut self) {
        let _ = weir(&["lab", "down", "--name", &self.name]);
    }
}

#[test]
fn lab_up_with_a_config_and_the_exit_statuses_against_its_host() {
    // A unique name whose labs the harness removes if this process dies.
    let name = common::spec("cli").name;
    let files = TempDir::new("lab");
    // Refused before anything is built: keys the lab sets itself, unknown keys, two plans.
    let taken = files.file("taken.toml", "[host]\nstate_dir = \"/tmp/x\"\n");
    let up = |cfg: &Path, extra: &[&str]| {
        let mut args = vec!["lab", "up", "--name", &name, "--runners", "1"];
        args.extend_from_slice(extra);
        weir_cmd(&args).arg("--config").arg(cfg).output().unwrap()
    };
    exits(&up(&taken, &[]), 2, &["host.state_dir", "set by the lab"]);
    let unknown = files.file("unknown.toml", "[telemetry]\notlp = \"x\"\n");
    exits(&up(&unknown, &[]), 2, &["unknown field `otlp`"]);
    let planned = files.file("plan.toml", "[overlay]\nsubnet = \"10.140.0.0/16/4/12\"\n");
    exits(
        &up(&planned, &["--plan", "10.128.0.0/12/6/14"]),
        2,
        &["--plan", "overlay.subnet"],
    );
    assert!(
        weir::dataplane::netns::list(&format!("weir-{name}-"))
            .unwrap()
            .is_empty(),
        "a refused lab up built nothing"
    );

    // The host takes [overlay] and [reservations], the runner its [runner] section.
    let cfg = files.file(
        "lab.toml",
        "[overlay]\nsubnet = \"10.140.0.0/16/4/12\"\n\n[reservations]\ndefault_ttl = \"7m\"\n\n\
         [runner]\nlabels = { rack = \"cli-test\" }\n",
    );
    let out = up(&cfg, &["--workloads", "1"]);
    let lab = LabUp {
        name: name.clone(),
        dir: Path::new(weir::lab::LAB_RUN_DIR).join(&name),
    };
    exits(&out, 0, &[]);
    assert!(stdout(&out).contains(&format!("weir lab down --name {name}")));

    // 0: status, with the host's and the runner's versions and the merged settings.
    let out = lab.weir(&["status", "--json"]);
    exits(&out, 0, &[]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["host_version"], VERSION, "{s}");
    assert_eq!(s["plan"], "10.140.0.0/16/4/12", "{s}");
    let r1 = &s["runners"][0];
    assert_eq!(r1["name"], "r1", "{s}");
    assert_eq!(r1["version"], VERSION, "{s}");
    assert_eq!(r1["labels"]["rack"], "cli-test", "{s}");
    let out = lab.weir(&["status"]);
    exits(&out, 0, &[]);
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("host version  {VERSION}\n")),
        "{text}"
    );
    let header = text.lines().find(|l| l.starts_with("RUNNER")).unwrap();
    assert!(header.ends_with("VERSION"), "{text}");
    let row = text.lines().find(|l| l.starts_with("r1 ")).unwrap();
    assert!(row.ends_with(VERSION), "{text}");
    // Several hosts: the command goes past those that do not answer to the one that leads
    // (the lab's host, alone, leads), whether the list comes from --host or WEIR_HOST.
    let dead_socket = files.0.join("dead.sock");
    let list = format!(
        "http://127.0.0.1:9, unix://{},{}",
        dead_socket.display(),
        lab.url()
    );
    let out = lab.weir(&["status", "--json", "--host", &list]);
    exits(&out, 0, &[]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["plan"], "10.140.0.0/16/4/12", "{listed}");
    let out = weir_cmd(&["runners", "--json"])
        .env("WEIR_HOST", &list)
        .env("WEIR_TOKEN", lab.token())
        .output()
        .unwrap();
    exits(&out, 0, &[]);
    assert!(stdout(&out).contains("\"r1\""), "{}", stdout(&out));
    // A refusal by the leader is the command's answer, as with one host.
    exits(
        &lab.weir(&["detach", "--id", "no-such-workload", "--host", &list]),
        1,
        &["NOT_FOUND"],
    );
    let out = lab.weir(&["reserve", "--runner", "r1", "--json"]);
    exits(&out, 0, &[]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ttl_ms = r["expires_unix_ms"].as_i64().unwrap() - weir::clock::now_ms();
    assert!(
        (6 * 60_000..=7 * 60_000).contains(&ttl_ms),
        "default_ttl 7m from --config: {r}"
    );

    // Watch mode: three frames, then exit 0; as JSON, one object per line.
    let out = lab.weir(&["status", "--watch", "--interval", "100ms", "--count", "3"]);
    exits(&out, 0, &[]);
    let frames = stdout(&out);
    assert_eq!(
        frames
            .lines()
            .filter(|l| l.starts_with("every 100ms: weir status"))
            .count(),
        3,
        "{frames}"
    );
    assert_eq!(frames.matches("host version  ").count(), 3, "{frames}");
    assert!(
        !frames.contains('\x1b'),
        "no screen control codes into a pipe"
    );
    let out = lab.weir(&[
        "status",
        "--watch",
        "--interval",
        "100ms",
        "--count",
        "2",
        "--json",
    ]);
    exits(&out, 0, &[]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|v| v["host_version"] == VERSION));
    // Interrupted (SIGINT, as Ctrl-C): it stops cleanly with 0.
    let mut child = weir_cmd(&["status", "--watch", "--interval", "100ms"])
        .env("WEIR_HOST", lab.url())
        .env("WEIR_TOKEN", lab.token())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("every 100ms: weir status"), "{first}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // 1: refused by the host — no token, a wrong one, a call the host refuses.
    let out = weir_cmd(&["status"])
        .env("WEIR_HOST", lab.url())
        .output()
        .unwrap();
    exits(
        &out,
        1,
        &[
            "UNAUTHENTICATED",
            "missing credentials",
            "WEIR_TOKEN",
            "--token-file",
        ],
    );
    let out = weir_cmd(&["status"])
        .env("WEIR_HOST", lab.url())
        .env("WEIR_TOKEN", "not-the-token")
        .output()
        .unwrap();
    exits(
        &out,
        1,
        &["UNAUTHENTICATED", "the token came from WEIR_TOKEN"],
    );
    let wrong = files.file("wrong.token", "not-the-lab-s-control-token\n");
    let out = weir_cmd(&["status", "--token-file", wrong.to_str().unwrap()])
        .env("WEIR_HOST", lab.url())
        .output()
        .unwrap();
    exits(&out, 1, &["UNAUTHENTICATED", "wrong.token"]);
    exits(
        &lab.weir(&["detach", "--id", "no-such-workload"]),
        1,
        &["NOT_FOUND"],
    );
    exits(&lab.weir(&["release", "--token", "no-such-token"]), 1, &[]);
    // 2: a usage error the CLI finds itself, before any call.
    exits(
        &lab.weir(&["attach", "--runner", "r1", "--id", "w"]),
        2,
        &["--netns PATH, --pid PID or --vm"],
    );
    // 1: the lab exists already.
    exits(&up(&cfg, &[]), 1, &["already exists"]);
    // 0: down removes it.
    exits(&weir(&["lab", "down", "--name", &name]), 0, &[]);
    assert!(
        weir::dataplane::netns::list(&format!("weir-{name}-"))
            .unwrap()
            .is_empty()
    );
}
