//! `weir certs`: a small CA for a cluster's TLS, as `kubeadm certs` or `step` make one: the CA,
//! the host's server certificate, and client certificates for mTLS (runners, the CLI,
//! schedulers).
//!
//! Everything lives in one directory: `ca.pem`/`ca.key`, then `NAME.pem`/`NAME.key` per
//! certificate. Keys are ECDSA P-256, written mode 0600 (certificates 0644); nothing is
//! overwritten without `--force`. The CA's name is derived from its key (`Weir CA <id>`), so
//! signing needs only `ca.key` and `ca.pem`, no other state.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::Digest;

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make the cluster's CA: DIR/ca.pem (give it to every runner and client) and DIR/ca.key
    /// (keep it on the machine that signs, mode 0600).
    Ca(CaArgs),
    /// Make the host's server certificate DIR/NAME.pem and key DIR/NAME.key, signed by the CA
    /// in DIR, valid for NAME and every --san (use for host.tls_cert and host.tls_key).
    Host(LeafArgs),
    /// Make a client certificate DIR/NAME.pem and key DIR/NAME.key for mTLS, signed by the CA
    /// in DIR (use for runner.tls_cert and runner.tls_key, or the CLI's --tls-cert/--tls-key).
    Runner(ClientArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// The directory holding the CA and the certificates (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Replace files that already exist (by default an existing file is an error).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(flatten)]
    common: Common,
    /// How long the CA is valid, in days.
    #[arg(long, default_value_t = 3650, value_name = "DAYS")]
    days: u32,
}

#[derive(Debug, Args)]
pub struct LeafArgs {
    #[command(flatten)]
    common: Common,
    /// The certificate's name: its common name, a DNS name it is valid for, and the files'
    /// names (NAME.pem, NAME.key).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// A further name or address runners and clients reach the host by (an IP address or a
    /// DNS name; repeat for several). Connecting to https://192.0.2.1:7700 needs
    /// `--san 192.0.2.1`.
    #[arg(long = "san", value_name = "IP|DNS")]
    sans: Vec<String>,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = 825, value_name = "DAYS")]
    days: u32,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    common: Common,
    /// The client's name (e.g. the runner's runner.name): its common name and the files'
    /// names (NAME.pem, NAME.key).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// How long the certificate is valid, in days.
    #[arg(long, default_value_t = 825, value_name = "DAYS")]
    days: u32,
}

pub fn run(cmd: CertsCommand) -> Result<(), CliError> {
    match cmd {
        CertsCommand::Ca(a) => ca(&a),
        CertsCommand::Host(a) => {
            let mut names = vec![a.name.clone()];
            names.extend(a.sans.iter().cloned());
            leaf(
                &a.common,
                &a.name,
                names,
                a.days,
                ExtendedKeyUsagePurpose::ServerAuth,
            )?;
            println!(
                "[host]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"   # mTLS: runners need a certificate of this CA",
                a.common.dir.join(format!("{}.pem", a.name)).display(),
                a.common.dir.join(format!("{}.key", a.name)).display(),
                a.common.dir.join("ca.pem").display()
            );
            Ok(())
        }
        CertsCommand::Runner(a) => {
            leaf(
                &a.common,
                &a.name,
                vec![a.name.clone()],
                a.days,
                ExtendedKeyUsagePurpose::ClientAuth,
            )?;
            println!(
                "[runner]\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                a.common.dir.join("ca.pem").display(),
                a.common.dir.join(format!("{}.pem", a.name)).display(),
                a.common.dir.join(format!("{}.key", a.name)).display()
            );
            Ok(())
        }
    }
}

fn failed(what: impl std::fmt::Display) -> CliError {
    CliError::Failed(what.to_string())
}

/// A certificate's or key's file name must stay inside DIR.
fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
        && name != "ca";
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "--name {name:?}: 1 to 64 of [A-Za-z0-9._-], not starting with '.', and not \"ca\" (the CA's own files)"
        )))
    }
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), CliError> {
    if days == 0 {
        return Err(CliError::Usage("--days: at least 1".into()));
    }
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| failed(format!("the system clock is before 1970: {e}")))?;
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    // An hour of slack for clocks a little behind.
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(u64::from(days) * 86_400);
    Ok(())
}

/// The CA's parameters; its name comes from its key, so they can be rebuilt from `ca.key`.
fn ca_params(key: &KeyPair) -> Result<CertificateParams, CliError> {
    let id = sha2::Sha256::digest(key.public_key_raw());
    let id: String = id[..6].iter().map(|b| format!("{b:02x}")).collect();
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    p.distinguished_name
        .push(DnType::CommonName, format!("Weir CA {id}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn ca(a: &CaArgs) -> Result<(), CliError> {
    let dir = prepare_dir(&a.common.dir)?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    refuse_existing(&[&cert_path, &key_path], a.common.force)?;
    let key = KeyPair::generate().map_err(failed)?;
    let mut p = ca_params(&key)?;
    validity(&mut p, a.days)?;
    let cert = p.self_signed(&key).map_err(failed)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    write(&cert_path, &cert.pem(), 0o644)?;
    eprintln!(
        "wrote {} and {} (keep the key secret; copy ca.pem to every runner and client)",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn leaf(
    common: &Common,
    name: &str,
    names: Vec<String>,
    days: u32,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(), CliError> {
    check_name(name)?;
    for san in &names {
        if san.parse::<IpAddr>().is_err() && !is_dns_name(san) {
            return Err(CliError::Usage(format!(
                "--san {san:?}: neither an IP address nor a DNS name"
            )));
        }
    }
    let dir = prepare_dir(&common.dir)?;
    let ca_key_path = dir.join("ca.key");
    let ca_cert_path = dir.join("ca.pem");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        failed(format!(
            "{}: {e} (make the CA first: weir certs ca --dir {})",
            ca_key_path.display(),
            dir.display()
        ))
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| failed(format!("{}: not a private key: {e}", ca_key_path.display())))?;
    if !ca_cert_path.exists() {
        return Err(failed(format!(
            "{}: missing (runners and clients need it; make the CA again with weir certs ca --dir {} --force)",
            ca_cert_path.display(),
            dir.display()
        )));
    }
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    refuse_existing(&[&cert_path, &key_path], common.force)?;
    let issuer = Issuer::new(ca_params(&ca_key)?, ca_key);
    let key = KeyPair::generate().map_err(failed)?;
    let mut p =
        CertificateParams::new(names).map_err(|e| CliError::Usage(format!("--san: {e}")))?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days)?;
    let cert = p.signed_by(&key, &issuer).map_err(failed)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    write(&cert_path, &cert.pem(), 0o644)?;
    eprintln!("wrote {} and {}", cert_path.display(), key_path.display());
    Ok(())
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn prepare_dir(dir: &Path) -> Result<PathBuf, CliError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| failed(format!("create {}: {e}", dir.display())))?;
    } else if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "--dir {}: not a directory",
            dir.display()
        )));
    }
    Ok(dir.to_path_buf())
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CliError> {
    if force {
        return Ok(());
    }
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() {
        Ok(())
    } else {
        Err(failed(format!(
            "{} already exist{}; nothing written (give --force to replace)",
            existing.join(" and "),
            if existing.len() == 1 { "s" } else { "" }
        )))
    }
}

/// Write `text` to `path` with `mode`: a new file is created with that mode (never readable by
/// others in between), a replaced one truncated and set to it.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    let err = |e: std::io::Error| failed(format!("write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_directory() {
        for ok in ["host", "r1", "weir-host.example", "a_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "ca", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(is_dns_name("host.example"));
        assert!(!is_dns_name("-x.example"));
        assert!(!is_dns_name("a..b"));
    }

    #[test]
    fn the_ca_name_is_rebuilt_from_its_key() {
        let key = KeyPair::generate().unwrap();
        let a = ca_params(&key).unwrap();
        let b = ca_params(&KeyPair::from_pem(&key.serialize_pem()).unwrap()).unwrap();
        assert_eq!(a.distinguished_name, b.distinguished_name);
        let other = ca_params(&KeyPair::generate().unwrap()).unwrap();
        assert_ne!(a.distinguished_name, other.distinguished_name);
    }
}
