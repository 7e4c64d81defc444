//! `jiandu tls …`: the office's private certificate authority. `init` makes the CA (kept in
//! `{data_dir}/tls/`, key mode 0600) and a server certificate, points `[tls]` of `jiandu.toml` at
//! them and prints how phones and tools come to trust the CA; run again, it renews the server
//! certificate from the same CA (a running `serve` picks it up without a restart). `device`
//! issues a phone's client certificate for mTLS.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use jiandu_tls::issue::{self, Issued};
use serde_json::json;

use crate::accounts::open_store;
use crate::config::{CONFIG_FILE, Config};

/// Files of the private CA and the server certificate.
struct TlsFiles {
    ca: PathBuf,
    ca_key: PathBuf,
    server: PathBuf,
    server_key: PathBuf,
}

impl TlsFiles {
    fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// `jiandu tls init`.
pub fn init(
    config: &Config,
    config_file: Option<&Path>,
    hosts: &[String],
    ips: &[IpAddr],
    office: &str,
    client_certs: bool,
    new_ca: bool,
) -> Result<()> {
    let dir = crate::config::absolute(&config.tls_dir());
    create_private_dir(&dir)?;
    let files = TlsFiles::in_dir(&dir);

    let ca = if files.ca.exists() && files.ca_key.exists() && !new_ca {
        eprintln!("using the existing CA {} (--new-ca replaces it)", files.ca.display());
        Issued {
            cert_pem: std::fs::read_to_string(&files.ca).with_context(|| format!("reading {}", files.ca.display()))?,
            key_pem: std::fs::read_to_string(&files.ca_key)
                .with_context(|| format!("reading {}", files.ca_key.display()))?,
        }
    } else {
        let ca = issue::authority(office).context("making the private CA")?;
        write_file(&files.ca, ca.cert_pem.as_bytes(), false)?;
        write_file(&files.ca_key, ca.key_pem.as_bytes(), true)?;
        ca
    };

    // Loopback names always: the platform's own roles and tools on the server use them.
    let mut names: Vec<String> = Vec::new();
    for n in hosts.iter().map(|h| h.trim().to_owned()).chain(ips.iter().map(IpAddr::to_string)) {
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    if names.len() > 100 {
        bail!("--hosts/--ip: at most 100 names in one certificate");
    }
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    }
    let server = issue::server(&ca, &names).with_context(|| format!("making the server certificate for {names:?}"))?;
    // Key first, then certificate, each replaced atomically: a running server reloads the pair
    // when both changed and refuses a mismatched pair in between.
    write_file(&files.server_key, server.key_pem.as_bytes(), true)?;
    write_file(&files.server, server.cert_pem.as_bytes(), false)?;

    let toml_path = config_file.map(Path::to_path_buf).unwrap_or_else(|| config.data_dir.join(CONFIG_FILE));
    set_tls_section(&toml_path, &files, client_certs)?;

    let public = names.iter().find(|n| !matches!(n.as_str(), "localhost" | "127.0.0.1" | "::1"));
    let host = public.map(String::as_str).unwrap_or("127.0.0.1");
    let ca_path = files.ca.display();
    println!(
        r#"Private CA:          {ca_path}   (ca.key stays on this server, mode 0600)
Server certificate:  {server} for {names}
Config:              [tls] set in {toml}
Listen on the network with e.g. `mqtts_listen = "0.0.0.0:8883"` and `https_listen = "0.0.0.0:8443"`,
and turn plaintext off (`mqtt_listen = "off"`, `http_listen = "off"`).

Install the CA on each phone (once; it is valid for 10 years):
  Android: copy ca.pem to the phone; Settings → Security → Encryption & credentials →
           Install a certificate → CA certificate → pick ca.pem. Apps that trust user CAs
           (the jiandu app does, via its network security config) then accept the server.
  iOS:     mail or AirDrop ca.pem to the phone; Settings → Profile Downloaded → Install;
           then Settings → General → About → Certificate Trust Settings → enable full trust.
Desk browsers: import ca.pem as a trusted authority (Chrome/Edge: Settings → Privacy and
  security → Manage certificates → Authorities; Firefox: Settings → Certificates → Import).
Tools:   mosquitto_sub --cafile {ca_path} -h {host} -p 8883 -u DEVICE_ID -P TOKEN -t 'jd/v1/dev/DEVICE_ID/inbox/#'
         curl --cacert {ca_path} https://{host}:8443/healthz
Renew the server certificate with `jiandu tls init` again (same CA); a running serve reloads it."#,
        server = files.server.display(),
        names = names.join(", "),
        toml = toml_path.display(),
    );
    if client_certs {
        println!("Phones must now show a client certificate: issue one per phone with `jiandu tls device DEVICE_ID`.");
    }
    let summary = json!({
        "ca": files.ca, "cert": files.server, "key": files.server_key, "hosts": names,
        "spki_sha256": issue::spki_sha256(&server.cert_pem)?, "config": toml_path,
    });
    println!("{summary}");
    Ok(())
}

/// `jiandu tls device ID`: a client certificate whose CN is the device id.
pub async fn device(config: &Config, id: &str, out: Option<&Path>) -> Result<()> {
    let store = open_store(config).await?;
    let device = store.device(id).await;
    store.close().await;
    match device? {
        Some(d) if d.revoked_at.is_none() => {}
        Some(_) => bail!("device {id} is revoked"),
        None => bail!("no device {id} (see `jiandu device list`)"),
    }
    let files = TlsFiles::in_dir(&crate::config::absolute(&config.tls_dir()));
    let ca = Issued {
        cert_pem: std::fs::read_to_string(&files.ca)
            .with_context(|| format!("reading {} (run `jiandu tls init` first)", files.ca.display()))?,
        key_pem: std::fs::read_to_string(&files.ca_key)
            .with_context(|| format!("reading {}", files.ca_key.display()))?,
    };
    let cert = issue::device(&ca, id).context("making the device certificate")?;
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| files.ca.with_file_name("devices"));
    create_private_dir(&dir)?;
    let (cert_path, key_path) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    write_file(&key_path, cert.key_pem.as_bytes(), true)?;
    write_file(&cert_path, cert.cert_pem.as_bytes(), false)?;
    eprintln!("install {} and {} on the phone as its client certificate", cert_path.display(), key_path.display());
    println!("{}", json!({"device": id, "cert": cert_path, "key": key_path, "ca": files.ca}));
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place (mode 0600 for
/// keys), so a reader never sees half a file.
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, if secret { 0o600 } else { 0o644 });
    let mut f = o.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Replaces the `[tls]` table of the config file (keeping every other line and comment).
fn set_tls_section(path: &Path, files: &TlsFiles, client_certs: bool) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = Vec::new();
    let mut in_tls = false;
    for line in text.lines() {
        let header = line.trim_start();
        if header.starts_with('[') {
            in_tls = header.split(['#']).next().is_some_and(|h| h.trim() == "[tls]");
        }
        if !in_tls {
            kept.push(line);
        }
    }
    while kept.last().is_some_and(|l| l.trim().is_empty()) {
        kept.pop();
    }
    let mut out = kept.join("\n");
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    out.push_str(&format!("\n\n[tls]\ncert = {}\nkey = {}\n", quote(&files.server), quote(&files.server_key)));
    if client_certs {
        out.push_str(&format!("client_ca = {}\nclient_auth = \"required\"\n", quote(&files.ca)));
    }
    if let Err(e) = toml::from_str::<toml::Table>(&out) {
        bail!("{} would not stay valid TOML after setting [tls] ({e}); set it by hand", path.display());
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_table_is_replaced_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jiandu.toml");
        std::fs::write(
            &path,
            "# top\nmqtt_listen = \"127.0.0.1:1\"\n[tls]\ncert = \"old\"\nkey = \"old\"\n[web]\ngcj02 = true\n",
        )
        .unwrap();
        let files = TlsFiles::in_dir(Path::new("/d/tls"));
        set_tls_section(&path, &files, true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["tls"]["cert"].as_str(), Some("/d/tls/server.pem"));
        assert_eq!(t["tls"]["client_ca"].as_str(), Some("/d/tls/ca.pem"));
        assert_eq!(t["web"]["gcj02"].as_bool(), Some(true));
        assert!(text.starts_with("# top\n") && !text.contains("old"), "{text}");
    }
}
