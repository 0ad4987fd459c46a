//! `cargo xtask run --tls`: a throwaway CA, a server certificate for
//! 127.0.0.1 and localhost and a client certificate (all ECDSA P-256),
//! made with `openssl` under `target/tls/`, laid out as libnbd's
//! `tls-certificates` and QEMU's `tls-creds-x509` folders want them; the
//! boot-config lines that carry the server's certificate and key; and the
//! client command lines that use them.

use std::fs;
use std::path::{Path, PathBuf};

use daxbox_tests::certs::{self, Ca};

use crate::XtaskError;

fn openssl_error(problem: String) -> XtaskError {
    XtaskError::Command {
        command: "openssl".into(),
        problem,
    }
}

/// Makes (afresh) the certificates under `dir`; returns the folder.
pub fn generate(dir: &Path) -> Result<PathBuf, XtaskError> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| XtaskError::Io(format!("{}: {e}", dir.display())))?;
    certs::new_ca(dir, "daxbox throwaway CA", 30).map_err(openssl_error)?;
    let ca = Ca {
        cert: &dir.join("ca-cert.pem"),
        key: &dir.join("ca-key.pem"),
    };
    certs::sign(
        dir,
        ca,
        "server",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        30,
    )
    .map_err(openssl_error)?;
    certs::sign(
        dir,
        ca,
        "client",
        "daxbox-client",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        30,
    )
    .map_err(openssl_error)?;
    Ok(dir.to_path_buf())
}

/// `key=` before each PEM block of `pem` (the boot config's PEM format).
pub fn pem_lines(key: &str, pem: &str) -> String {
    pem.lines()
        .map(|line| {
            if line.starts_with("-----BEGIN") {
                format!("{key}={line}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

/// The boot-config lines for the server certificate and key in `dir`.
pub fn boot_lines(dir: &Path) -> Result<String, XtaskError> {
    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .map_err(|e| XtaskError::Io(format!("{}: {e}", dir.join(name).display())))
    };
    Ok(format!(
        "tls=on\n{}{}",
        pem_lines("tls_cert", &read("server-cert.pem")?),
        pem_lines("tls_key", &read("server-key.pem")?)
    ))
}

/// The guest's HTTPS port (the boot config's `https_port` default).
pub const GUEST_HTTPS_PORT: u16 = 443;

/// Client command lines for the certificates in `dir`: NBD on host port
/// `nbd_port`, HTTPS on `https_port`. The server certificate names
/// `localhost` and 127.0.0.1.
pub fn client_lines(dir: &Path, nbd_port: u16, https_port: u16) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("nbdinfo 'nbds://127.0.0.1:{nbd_port}/NAME?tls-certificates={d}'"),
        format!(
            "qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir={d} \
             --image-opts driver=nbd,host=127.0.0.1,port={nbd_port},export=NAME,tls-creds=tls0"
        ),
        format!("curl --cacert {d}/ca-cert.pem https://localhost:{https_port}/healthz"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_get_their_key() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_lines("tls_cert", pem),
            "tls_cert=-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
             tls_cert=-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n"
        );
    }

    #[test]
    fn generated_certificates_give_boot_lines_daxbox_parses() {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            return;
        }
        let dir = std::env::temp_dir().join(format!("daxbox-tls-certs-{}", std::process::id()));
        generate(&dir).unwrap();
        for file in [
            "ca-cert.pem",
            "server-cert.pem",
            "server-key.pem",
            "client-cert.pem",
            "client-key.pem",
        ] {
            assert!(dir.join(file).exists(), "{file}");
        }
        let lines = boot_lines(&dir).unwrap();
        let commands = client_lines(&dir, 10809, 8443);
        assert_eq!(
            commands[2],
            format!(
                "curl --cacert {}/ca-cert.pem https://localhost:8443/healthz",
                dir.display()
            )
        );
        assert!(lines.starts_with("tls=on\ntls_cert=-----BEGIN CERTIFICATE-----\n"));
        assert!(lines.contains("tls_key=-----BEGIN PRIVATE KEY-----\n"));
        let _ = fs::remove_dir_all(&dir);
    }
}
